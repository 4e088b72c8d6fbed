"""Data: registrations (``builtin.py``, helpers in ``datasets.py``), every mapper
(``dataset_mapper.py``), every loader (``build.py``), subsets (``subsets.py``), the crop generator
(``views.py``), photometric augmentation (``photometric.py``), robust image reading
(``image_io.py``), the embedded dataset (``synthetic.py``) and the VOC loader (``voc.py``).

Imports run one way: builtin -> datasets / synthetic / voc; build -> dataset_mapper -> views /
photometric / image_io.
"""
