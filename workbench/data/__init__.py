"""Data: corpus recipes -> tokenizer -> packed token files -> a deterministic, resumable batch loader.

```
corpus = load_corpus("default")                 # or a file, a folder, "hf:NAME"
tok = build_tokenizer("byte")                   # or "bpe" (trained on corpus.documents)
packed = pack_corpus(corpus, tok)               # train.bin / val.bin memmaps, cached
loader = TokenLoader(packed.train, batch_size=8, seq_len=128, seed=0)
x, y = loader.batch(step=0)                     # y[t] = x[t+1]
```
Used by the trainer (workbench/train), ``make demo`` and notebooks/01_training.ipynb.
"""

from workbench.data.corpus import Corpus, load_corpus
from workbench.data.loader import TokenLoader
from workbench.data.packing import PackedData, pack_corpus, token_dtype
from workbench.data.tokenizer import BPETokenizer, ByteTokenizer, build_tokenizer, load_tokenizer

__all__ = ["BPETokenizer", "ByteTokenizer", "Corpus", "PackedData", "TokenLoader", "build_tokenizer",
           "load_corpus", "load_tokenizer", "pack_corpus", "token_dtype"]
