"""One self-contained HTML page from report sections (figures beside it, relative paths)."""
import html
import os
from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

from ..atomic import atomic_write_bytes

__all__ = ["Section", "write_html"]

_STYLE = """
body { font-family: sans-serif; max-width: 1200px; margin: 2em auto; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; } .note { color: #8a5a00; font-style: italic; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: left; }
"""


@dataclass
class Section:
    """One part of the report.

    Attributes:
        title: heading.
        text: paragraphs (plain text, escaped) saying what is shown and how to read it.
        figures: (file path relative to the report, caption).
        table: optional rows of cells; the first row is the header.
        note: shown instead of the content when the section does not apply to this model.
    """

    title: str
    text: List[str] = field(default_factory=list)
    figures: List[Tuple[str, str]] = field(default_factory=list)
    table: List[Sequence[str]] = field(default_factory=list)
    note: str = ""


def _section_html(sec: Section) -> str:
    e = html.escape
    parts = [f"<h2>{e(sec.title)}</h2>"]
    if sec.note:
        parts.append(f'<p class="note">{e(sec.note)}</p>')
    parts += [f"<p>{e(t)}</p>" for t in sec.text]
    if sec.table:
        head, *rows = sec.table
        parts.append("<table><tr>" + "".join(f"<th>{e(str(c))}</th>" for c in head) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows]
        parts.append("</table>")
    for path, caption in sec.figures:
        src = e(path.replace(os.sep, "/"), quote=True)
        parts.append(f'<figure><a href="{src}"><img src="{src}" alt="{e(caption, quote=True)}">'
                     f"</a><figcaption>{e(caption)}</figcaption></figure>")
    return "\n".join(parts)


def write_html(path: str, title: str, sections: Sequence[Section], summary: Sequence[str]) -> str:
    """Write the report page.

    Args:
        path: the ``report.html`` to write; figure paths of the sections are relative to its
            folder, so the page opens from disk (no server) and the folder can be moved whole.
        title: page title.
        sections: in order.
        summary: lines shown under the title (checkpoint, dataset, timings).

    Returns:
        ``path``.

    Raises:
        FileNotFoundError: a section references a figure that does not exist.
    """
    root = os.path.dirname(os.path.abspath(path))
    for sec in sections:
        for fig, _ in sec.figures:
            if not os.path.isfile(os.path.join(root, fig)):
                raise FileNotFoundError(f"report figure {fig!r} is missing under {root}")
    e = html.escape
    body = [f"<h1>{e(title)}</h1>", "<ul>"] + [f"<li>{e(s)}</li>" for s in summary] + ["</ul>"]
    toc = "".join(f'<li><a href="#s{i}">{e(s.title)}</a></li>' for i, s in enumerate(sections))
    body.append(f"<ol>{toc}</ol>")
    body += [f'<div id="s{i}">{_section_html(s)}</div>' for i, s in enumerate(sections)]
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{e(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    atomic_write_bytes(path, page.encode("utf-8"))
    return path
