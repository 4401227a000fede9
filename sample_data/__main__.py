"""``python -m xt_core.sample_data``: fetch the sample slide and print its path."""

from xt_core.sample_data import sample_slide_path

print(sample_slide_path())
