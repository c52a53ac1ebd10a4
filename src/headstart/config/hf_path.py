"""Where a recipe's data path names a Hugging Face data set on the Hub (headstart.data.hf_source)."""

# data.path of a data set on the Hub: hf://datasets/NAME (downloaded once, then read from the cache).
HF_PREFIX = "hf://datasets/"
