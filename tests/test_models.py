import torch
from transformers import LlamaForCausalLM

from classit.models import count_parameters, llama_config


def meta_model(preset):
    with torch.device("meta"):
        return LlamaForCausalLM(llama_config(preset))


def test_paper_presets_have_exact_parameter_counts():
    assert count_parameters(meta_model("llama-140m")) == 140_231_872
    assert count_parameters(meta_model("llama-100m")) == 100_684_288


def test_presets_are_llama_shaped():
    cfg = llama_config("llama-140m")
    assert cfg.head_dim == 64 and not cfg.tie_word_embeddings
    assert cfg.num_key_value_heads == cfg.num_attention_heads  # full multi-head attention
    assert cfg.intermediate_size == 4 * cfg.hidden_size
    assert count_parameters(meta_model("tiny")) < 1_000_000
