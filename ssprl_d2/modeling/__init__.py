from .ssprl import SSPRL, group_crops_by_size
