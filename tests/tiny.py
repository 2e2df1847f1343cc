"""Tiny real models for trainer tests that need exact numbers, not the default model's size: a word-level
tokenizer built with `tokenizers` (no hub) whose id 0 is the ordinary token "!" (as in Llama-3, Qwen2 and GPT-2
vocabularies), a chat template with a default system prompt, and randomly initialised Llama models (causal LM or
one-output sequence classifier) of a few thousand parameters.

    tok = tiny_tokenizer()                    # pad "<pad>" (id 2)
    tok = tiny_tokenizer(pad_is_eos=True)     # pad = eos = "</s>", as Llama-3.1 ships
    model = tiny_causal_lm(tok, attention_dropout=0.5)
"""

from __future__ import annotations

from pathlib import Path

WORDS = ["!", "<s>", "<pad>", "</s>", "[UNK]", "<|system|>", "<|user|>", "<|assistant|>", "you", "are", "helpful",
         "hello", "world", "yes", "no", "how", "do", "i", "pick", "a", "lock", "sorry", "cannot", "help", "with",
         "that", "sure", "here", "is", "the", "way", "first", "then", "ok", "bye", "one", "two", "three", "four",
         "five", "six", "seven", "eight", "nine", "ten"]

# Every turn ends with "</s>"; a conversation without a system turn gets a default one (as SmolLM2's template does).
CHAT_TEMPLATE = (
    "<s> {% if messages[0]['role'] != 'system' %}<|system|> you are helpful </s> {% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def tiny_tokenizer(pad_is_eos: bool = False):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="[UNK]",
                                  pad_token="</s>" if pad_is_eos else "<pad>",
                                  additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"])
    tok.chat_template = CHAT_TEMPLATE
    assert tok.convert_tokens_to_ids("!") == 0
    return tok


def _config(tok, attention_dropout: float, hidden_size: int = 32, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(WORDS), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                       num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       attention_dropout=attention_dropout, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
                       **extra)


def tiny_causal_lm(tok, attention_dropout: float = 0.0, seed: int = 0, hidden_size: int = 32):
    """hidden_size 32: a few thousand parameters; 1024: about 12M, for checkpoints that take a moment to write."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(_config(tok, attention_dropout, hidden_size)).eval()


def tiny_reward_model(tok, attention_dropout: float = 0.0, seed: int = 0):
    import torch
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    return LlamaForSequenceClassification(_config(tok, attention_dropout, num_labels=1)).eval()


def save(model, tok, folder: Path) -> str:
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return str(folder)
