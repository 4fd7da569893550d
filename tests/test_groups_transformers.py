"""rewa.param_groups and the optimizer's warnings on the models people already have: transformers'
GPT-2 (Conv1D, a tied LM head), Llama, BERT and a LoRA-wrapped model, all built from small configs
(no downloads); and the silent traps of issue 37 (zero weights, vectors under M > 0, betas on the
SGD base, sparse gradients)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import rewa
from rewa import ReWA
from rewa.sparsity import sparsity_report, weight_modules

transformers = pytest.importorskip("transformers")


def gpt2():
    config = transformers.GPT2Config(
        vocab_size=100,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config)


def llama():
    config = transformers.LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return transformers.LlamaForCausalLM(config)


def bert():
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    return transformers.BertForMaskedLM(config)


def names_under_rewa(model, groups):
    ids = {id(p) for p in groups[0]["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_gpt2_blocks_are_sparsified_and_the_tied_head_stays_dense():
    model = gpt2()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        groups = rewa.param_groups(model)
    under = names_under_rewa(model, groups)
    # every Conv1D of both blocks (attention in/out, MLP in/out), nothing else
    assert under == {
        f"transformer.h.{i}.{name}.weight"
        for i in range(2)
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
    assert "transformer.wte.weight" not in under  # the embedding, tied to lm_head
    rewa.prune_(model, sparsity=0.9)
    blocks = [m.weight for m in model.modules() if type(m).__name__ == "Conv1D"]
    zeros = sum(int((w == 0).sum()) for w in blocks) / sum(w.numel() for w in blocks)
    assert zeros == pytest.approx(0.9, abs=1e-3)
    assert float((model.transformer.wte.weight == 0).float().mean()) < 0.01


def test_llama_and_bert_put_every_projection_under_rewa_and_keep_heads_dense():
    for model, head in ((llama(), "lm_head"), (bert(), "cls.predictions.decoder")):
        groups = rewa.param_groups(model)
        under = names_under_rewa(model, groups)
        linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)} - {
            f"{head}.weight"
        }
        assert under == linear, type(model).__name__
        assert f"{head}.weight" not in under
        names = {n for n, _ in weight_modules(model)}
        assert head not in names


def test_include_and_exclude_select_by_pattern_or_type_and_agree_with_measurement():
    model = gpt2()
    groups = rewa.param_groups(model, include=["lm_head"], exclude=["*.attn.c_attn"])
    under = names_under_rewa(model, groups)
    assert "transformer.wte.weight" in under  # the tied head is the embedding's weight
    assert not any("c_attn" in n for n in under)
    measured = {n for n, _ in weight_modules(model)}
    assert "lm_head" in measured and not any("c_attn" in n for n in measured)
    model = llama()
    groups = rewa.param_groups(model, include=[nn.Embedding])
    assert "model.embed_tokens.weight" in names_under_rewa(model, groups)
    with pytest.raises(ValueError, match="matches no module"):
        rewa.param_groups(llama(), include=["no.such.layer"])


def test_lora_b_matrices_are_not_put_where_they_could_never_move():
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_alpha=8)
    model = peft.get_peft_model(llama(), config)
    with pytest.warns(UserWarning, match="all-zero weight"):
        groups = rewa.param_groups(model, weight_decay=0.0)
    under = names_under_rewa(model, groups)
    assert under and all("lora_A" in n for n in under)
    opt = ReWA(groups, lr=1e-2, K=3, M=2, base="adamw")
    ids = torch.randint(0, 100, (2, 8))
    for _ in range(3):
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert all(float(p.detach().abs().max()) > 0 for p in b)


def test_sparsity_report_counts_gpt2_blocks():
    model = gpt2()
    report = sparsity_report(model)
    assert report.total == sum(
        m.weight.numel() for n, m in model.named_modules() if type(m).__name__ == "Conv1D"
    )


# ---------------------------------------------------------------- the optimizer's warnings


def test_an_all_zero_weight_under_m_above_0_warns_at_its_first_step():
    w = nn.Parameter(torch.zeros(4, 4))
    opt = ReWA([w], lr=1e-2, K=3, M=2)
    w.grad = torch.randn(4, 4)
    with pytest.warns(UserWarning, match="all zeros .* never move"):
        opt.step()
    opt = ReWA([nn.Parameter(torch.zeros(4))], lr=1e-2, K=3, M=0, eps=1e-3, base="adamw")
    opt.param_groups[0]["params"][0].grad = torch.randn(4)
    with pytest.warns(UserWarning, match="all zeros"):
        opt.step()


def test_vectors_under_rewa_warn_and_param_groups_does_not():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    with pytest.warns(UserWarning, match="biases, norm weights"):
        ReWA(model.parameters(), lr=1e-2, K=3, M=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ReWA(rewa.param_groups(model), lr=1e-2, K=3, M=2)
        ReWA(rewa.param_groups(model, all_params=True), lr=1e-2, K=3, M=2)  # meant


def test_one_cycle_cycles_momentum_on_the_sgd_base():
    model = nn.Linear(4, 4)
    opt = ReWA(rewa.param_groups(model), lr=0.1, momentum=0.9)
    assert "betas" not in opt.defaults and "betas" not in opt.param_groups[0]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.95)  # OneCycle's max_momentum
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    sched.step()
    adam = ReWA(model.parameters(), lr=0.1, base="adamw", K=1, M=0)
    assert adam.param_groups[0]["betas"] == (0.9, 0.999)
    mixed = ReWA([{"params": [nn.Parameter(torch.randn(2))], "base": "adamw"}], lr=0.1)
    assert mixed.param_groups[0]["adam_eps"] == 1e-8


def test_sparse_gradients_step_in_a_plain_group_like_torch_sgd():
    torch.manual_seed(0)
    emb = nn.Embedding(10, 3, sparse=True)
    twin = nn.Embedding(10, 3, sparse=True)
    twin.load_state_dict(emb.state_dict())
    opt = ReWA(
        [{"params": emb.parameters(), "K": 1, "M": 0, "eps": 0, "momentum": 0, "weight_decay": 0}],
        lr=0.5,
    )
    ref = torch.optim.SGD(twin.parameters(), lr=0.5)
    idx = torch.tensor([1, 2, 2, 7])
    for module, o in ((emb, opt), (twin, ref)):
        module(idx).sum().backward()
        o.step()
    assert torch.equal(emb.weight, twin.weight)
    bad = ReWA(nn.Embedding(10, 3, sparse=True).parameters(), lr=0.5, K=3, M=2)
    bad.param_groups[0]["params"][0].grad = torch.sparse_coo_tensor(
        torch.tensor([[1]]), torch.ones(1, 3), (10, 3)
    )
    with pytest.raises(RuntimeError, match="plain group"):
        bad.step()


# ---------------------------------------------------------------- saving a pruned model


def test_a_pruned_gpt2_saves_sparse_in_safetensors_and_loads_back_into_its_architecture(tmp_path):
    """`rewa.export.save_sparse(model, "m.safetensors")` is several times smaller than
    `save_pretrained` at 90% sparsity, stores the tied head once, and `load_state_dict` of
    `load_sparse` into a model built from the same config gives the same outputs bit for bit."""
    from rewa.export import load_sparse, save_sparse

    torch.manual_seed(0)
    model = gpt2()
    rewa.prune_(model, sparsity=0.9)
    size = save_sparse(model, tmp_path / "model.safetensors", meta={"note": "test"})
    model.save_pretrained(tmp_path / "dense")
    dense_size = (tmp_path / "dense" / "model.safetensors").stat().st_size
    assert size < 0.6 * dense_size  # the embeddings and norms stay dense
    fresh = transformers.GPT2LMHeadModel(model.config)
    fresh.load_state_dict(load_sparse(tmp_path / "model.safetensors"))
    assert fresh.lm_head.weight.data_ptr() == fresh.transformer.wte.weight.data_ptr()
    ids = torch.randint(0, 100, (2, 8))
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, fresh(ids).logits)
    from rewa.export import load_sparse_meta

    assert load_sparse_meta(tmp_path / "model.safetensors") == {"note": "test"}


def test_a_file_that_is_not_a_sparse_export_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    from rewa.export import ExportError, load_sparse

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ExportError, match="not a rewa sparse export"):
        load_sparse(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ExportError, match="cannot read"):
        load_sparse(tmp_path / "junk.safetensors")
