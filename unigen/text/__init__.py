"""Text encoders: a JAX port of BERT-style encoders (sentence-transformers' all-MiniLM-L6-v2 and
other BERT folders) with sentence-transformers' pooling, CLIP's text transformer (SD3, Flux) and
T5 v1.1's encoder (SD3, Flux), each with its tokenizer (the `tokenizers` package; no torch or
transformers at run time).

    from unigen import from_pretrained
    from unigen.text import resolve_text_encoder
    encoder = from_pretrained(resolve_text_encoder("all-MiniLM-L6-v2"))
    out = encoder.encode(["a photo of a cat"])      # TextEncoding(tokens, mask, pooled)

Weights load through unigen.convert.bert (registered with `unigen.from_pretrained`).
"""

from unigen.text.bert import Bert, BertConfig
from unigen.text.clip import CLIPTextConfig, CLIPTextModel, CLIPTextOutput
from unigen.text.clip_tokenizer import CLIPTokenBatch, CLIPTokenizer
from unigen.text.encoder import TextEncoder, TextEncoderConfig, TextEncoding, pool
from unigen.text.folder import EncoderFolder, read_encoder_folder
from unigen.text.prompt_encoders import (CLIPPromptEncoder, T5PromptEncoder, as_prompt_encoder,
                                         register_prompt_encoder)
from unigen.text.resolve import resolve_text_encoder
from unigen.text.t5 import T5Encoder, T5EncoderConfig, T5EncoderOutput
from unigen.text.t5_tokenizer import T5TokenBatch, T5Tokenizer
from unigen.text.tokenizer import TokenBatch, Tokenizer

__all__ = ["Bert", "BertConfig", "TextEncoder", "TextEncoderConfig", "TextEncoding", "pool", "EncoderFolder",
           "read_encoder_folder", "resolve_text_encoder", "TokenBatch", "Tokenizer", "CLIPTextConfig", "CLIPTextModel",
           "CLIPTextOutput", "CLIPTokenBatch", "CLIPTokenizer", "T5Encoder", "T5EncoderConfig", "T5EncoderOutput",
           "T5TokenBatch", "T5Tokenizer", "as_prompt_encoder", "register_prompt_encoder",
           "CLIPPromptEncoder", "T5PromptEncoder"]
