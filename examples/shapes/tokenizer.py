"""A CLIP tokenizer whose vocabulary is the shapes world's caption words, one token per word.

CLIP's BPE splits a word into characters, marks the last one with "</w>", then applies merges in
rank order. A word becomes one token only if the merges build it, so `learn_merges` runs BPE
learning on the caption words until every word is whole. The base alphabet holds only the
characters those words use: any other character maps to the unknown token, which is its own
token (not <|endoftext|> as in OpenAI's CLIP) so the text encoder's pooling, which stops at the
first <|endoftext|>, never mistakes an unknown word for the end of the prompt.

    >>> tok = build_tokenizer()
    >>> tok.convert_ids_to_tokens(tok("a red circle on a blue background").input_ids)[:3]
    ['<|startoftext|>', 'a</w>', 'red</w>']

Save for a pipeline folder:  python -m examples.shapes.tokenizer OUT_DIR/tokenizer
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from transformers import CLIPTokenizer

from bench.shapes import VOCABULARY

END_OF_WORD = "</w>"
UNK, BOS, EOS = "<|unk|>", "<|startoftext|>", "<|endoftext|>"
# A caption is 7 words + start + end = 9 tokens. 16 leaves room for a few extra words and keeps
# the text encoder's position table and the UNet's cross-attention short; SD pipelines pad every
# prompt to this length, so the text encoder needs max_position_embeddings >= 16.
MODEL_MAX_LENGTH = 16


def _symbols(word: str) -> list[str]:
    return list(word[:-1]) + [word[-1] + END_OF_WORD]


def learn_merges(words) -> list[tuple[str, str]]:
    """BPE merges, most frequent adjacent pair first (ties: smallest pair), until each word is one symbol."""
    split = [_symbols(word) for word in words]
    merges = []
    while any(len(symbols) > 1 for symbols in split):
        pairs = Counter(pair for symbols in split for pair in zip(symbols, symbols[1:]))
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        split = [_merge(symbols, best) for symbols in split]
    return merges


def _merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def build_vocab(words=VOCABULARY) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(token -> id, merges). Special tokens come last with <|endoftext|> highest, as in OpenAI's
    CLIP, so a text encoder that pools at argmax(input_ids) (transformers' legacy path) also works."""
    merges = learn_merges(words)
    alphabet = sorted({symbol for word in words for symbol in _symbols(word)})
    tokens = alphabet + [left + right for left, right in merges]
    tokens = list(dict.fromkeys(tokens)) + [UNK, BOS, EOS]
    return {token: i for i, token in enumerate(tokens)}, merges


def build_tokenizer(model_max_length: int = MODEL_MAX_LENGTH) -> CLIPTokenizer:
    vocab, merges = build_vocab()
    return CLIPTokenizer(vocab=vocab, merges=merges, unk_token=UNK, bos_token=BOS, eos_token=EOS,
                         pad_token=EOS, model_max_length=model_max_length)


def save_tokenizer(folder: str, model_max_length: int = MODEL_MAX_LENGTH) -> CLIPTokenizer:
    """save_pretrained, plus the vocab.json / merges.txt pair that SD folders carry and that
    tokenizers without tokenizer.json support (transformers 4's slow CLIPTokenizer) read."""
    tokenizer = build_tokenizer(model_max_length)
    tokenizer.save_pretrained(folder)
    vocab, merges = build_vocab()
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False, indent=1)
    # The first line is a header: readers skip it.
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in merges))
    return tokenizer


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="output folder, e.g. MODEL/tokenizer")
    parser.add_argument("--model-max-length", type=int, default=MODEL_MAX_LENGTH)
    args = parser.parse_args(argv)
    tokenizer = save_tokenizer(args.folder, args.model_max_length)
    print(f"saved a {len(tokenizer)}-token CLIP tokenizer to {args.folder}")


if __name__ == "__main__":
    main()
