"""Makes tiny Llama models for the real-vLLM test image, with nothing downloaded from a model hub.

Random weights (seeded, so every build makes the same model), a byte-level BPE tokenizer trained here
on generated text, and a chat template. Run at image build time:

    python make_tiny_llama.py OUT_DIR

writes OUT_DIR/tiny-llama (attention head size 32: the smallest vLLM's CPU backend serves) and
OUT_DIR/tiny-llama-h16 (head size 16: vLLM starts, says healthy, then its first request fails and
the server exits, which is how the suite gets a real "dies after becoming healthy" engine).

Both take POSITIONS tokens of context, far more than a test reads: at 130-400 tokens/s here a stream
that fills it runs for minutes, so a test can hold one open (a kill, a sleep or a queue behind it lands
mid-stream for certain) and end it by closing its client. The KV cache of a token is 512 bytes, so a
whole context takes 16 MiB of the 1 GiB cache the tests give vLLM.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

POSITIONS = 32768  # tests/e2e/stack.py LONG_CONTEXT
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
WORDS = (
    "the model answers a question about gateways containers engines tokens streams requests "
    "hello world you are a helpful assistant say something short please count one two three "
    "four five six seven eight nine ten system user assistant"
).split()


def corpus(lines: int = 600) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16))) for _ in range(lines)]


def tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=POSITIONS,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_model(out: Path, tok: PreTrainedTokenizerFast, *, hidden: int, heads: int) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        vocab_size=len(tok),
        max_position_embeddings=POSITIONS,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)


def main(out_dir: str) -> None:
    out = Path(out_dir)
    tok = tokenizer()
    save_model(out / "tiny-llama", tok, hidden=64, heads=2)
    save_model(out / "tiny-llama-h16", tok, hidden=32, heads=2)


if __name__ == "__main__":
    main(sys.argv[1])
