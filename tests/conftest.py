import os
import sys

# tests/util.py is imported as a plain module
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
