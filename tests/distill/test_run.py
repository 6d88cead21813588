"""The distill job on tiny models: stages, the teacher cache, resume after a kill, bad input."""

import gc
import json
import re

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback

from tests.distill.tolerance import EPS32, assert_float32_close
from xtok.configfile import config_from_dict
from xtok.distill.data import BlockDataset, pack_documents
from xtok.distill.run import partial_dir, run_distill
from xtok.distill.trainer import DistillTrainer

TEXTS = ["def add(a, b):\n    return a + b\n", "The quick brown fox jumps over the lazy dog. " * 3,
         "for i in range(10):\n    print(i * i)\n", "x = [1, 2, 3]\ny = sum(x)\n"]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": t * 4, "domain": "code"}) + "\n" for t in TEXTS))
    return path


def _cfg(tmp_path, student, teacher, data_file, **kw):
    base = {"recipe": "distill", "student": str(student), "teacher": teacher and str(teacher), "out": str(tmp_path / "out"),
            "data": {"spec": str(data_file)}, "seq_len": 16, "max_sequences": 8, "batch_size": 2,
            "teacher_cache": {"top_k": 16}, "logging_steps": 1, "save_steps": 2,
            "stages": [{"train": "embeddings", "steps": 2, "learning_rate": 1e-2, "scheduler": "constant"},
                       {"train": "full", "steps": 2, "learning_rate": 1e-3, "scheduler": "constant"}]}
    base.update(kw)
    return config_from_dict(base)


def _weights(folder):
    return AutoModelForCausalLM.from_pretrained(folder).state_dict()


def test_pack_documents_keeps_the_stream(real_tokenizer):
    tok = real_tokenizer("smollm2-135m")
    blocks = pack_documents(tok, TEXTS, seq_len=8)
    stream = []
    for t in TEXTS:
        stream += [tok.bos_token_id, *tok(t, add_special_tokens=False)["input_ids"], tok.eos_token_id]
    assert blocks.shape == (len(stream) // 8, 8)
    assert blocks.flatten().tolist() == stream[: blocks.numel()]
    assert pack_documents(tok, TEXTS, seq_len=8, max_sequences=2).shape == (2, 8)
    with pytest.raises(ValueError, match="less than one sequence"):
        pack_documents(tok, ["hi"], seq_len=512)


def test_packed_blocks_in_a_file_are_the_blocks_in_memory(real_tokenizer, tmp_path, monkeypatch):
    """Written a batch of documents at a time (batches of 2 here, so blocks span batches) into a file and mapped, the
    blocks are those packed in memory; bad input leaves no file behind."""
    import xtok.distill.data as data_mod

    tok = real_tokenizer("smollm2-135m")
    monkeypatch.setattr(data_mod, "DOCUMENT_BATCH", 2)
    memory = pack_documents(tok, TEXTS * 3, seq_len=7)
    mapped = pack_documents(tok, iter(TEXTS * 3), seq_len=7, path=tmp_path / "b.int32")
    assert mapped.dtype == torch.int32 and torch.equal(mapped, memory)
    assert (tmp_path / "b.int32").stat().st_size == memory.numel() * 4 and sorted(tmp_path.iterdir()) == [tmp_path / "b.int32"]
    assert torch.equal(pack_documents(tok, TEXTS * 3, seq_len=7, max_sequences=3, path=tmp_path / "c"), memory[:3])
    with pytest.raises(ValueError, match="less than one sequence"):
        pack_documents(tok, ["hi"], seq_len=512, path=tmp_path / "d")
    assert not (tmp_path / "d").exists() and not list(tmp_path.glob(".*"))


def test_training_blocks_are_packed_once_per_run_folder(real_tokenizer, tmp_path, data_file, monkeypatch):
    import xtok.distill.data as data_mod
    from xtok.config import DataConfig
    from xtok.distill.data import training_blocks

    tok = real_tokenizer("smollm2-135m")
    in_memory = training_blocks(tok, DataConfig(spec=str(data_file)), 16)
    first = training_blocks(tok, DataConfig(spec=str(data_file)), 16, None, tmp_path / "data")

    def packed_again(*a, **k):
        raise RuntimeError("packed again")

    monkeypatch.setattr(data_mod, "pack_documents", packed_again)
    again = training_blocks(tok, DataConfig(spec=str(data_file)), 16, None, tmp_path / "data")
    assert torch.equal(first, again) and torch.equal(first, in_memory)
    with pytest.raises(RuntimeError, match="packed again"):  # another seq_len is another key
        training_blocks(tok, DataConfig(spec=str(data_file)), 8, None, tmp_path / "data")


def test_a_corpus_is_packed_and_read_within_a_memory_budget(real_tokenizer, tmp_path):
    """A 12 MB corpus (about 4M tokens) packed into a run folder and read back in random order: anonymous memory
    grows by a fraction of what the old list-based packing held (its text, a Python int per token and an int64
    tensor: 574 MB here, measured), and the blocks are the stream of the documents."""
    import random
    import threading

    from xtok.config import DataConfig
    from xtok.distill.data import training_blocks

    tok = real_tokenizer("smollm2-135m")
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "x", "y", "z", "return", "value", "the", "of", "12", "345"]
    corpus = tmp_path / "big.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for _ in range(3600):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(800))}) + "\n")
    assert corpus.stat().st_size > 12e6
    peak, done = [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_anon_mb())
            done.wait(0.005)

    from xtok.corpus import load_corpus

    load_corpus(str(corpus))  # datasets' own one-time conversion of the jsonl into its Arrow cache, not measured
    gc.collect()
    before = _rss_anon_mb()
    peak[0] = before
    watcher = threading.Thread(target=sample)
    watcher.start()
    try:
        blocks = training_blocks(tok, DataConfig(spec=str(corpus)), 512, None, tmp_path / "run")
        data = BlockDataset(blocks)
        for i in torch.randperm(len(data), generator=torch.Generator().manual_seed(0)).tolist():
            item = data[i]
    finally:
        done.set()
        watcher.join()
    assert blocks.numel() > 3e6 and item["input_ids"].dtype == torch.long
    assert peak[0] - before < 40, f"packing and reading grew anonymous memory by {peak[0] - before:.1f} MB"
    first = tok(json.loads(corpus.read_text(encoding="utf-8").split("\n", 1)[0])["text"], add_special_tokens=False)
    assert blocks[0, :50].tolist() == [tok.bos_token_id, *first["input_ids"][:49]]


def test_two_stages_train_what_they_say(tiny_model_dir, tmp_path, data_file, capfd):
    student, teacher = tiny_model_dir("smollm2-135m"), tiny_model_dir("smollm2-135m", seed=1)
    out, report = run_distill(_cfg(tmp_path, student, teacher, data_file), progress=True)
    err = capfd.readouterr().err  # progress: bars with the time left, for the teacher cache and each stage's steps
    assert re.search(r"teacher cache: 100%\|.*\| 8/8 \[\d\d:\d\d<00:00", err), err[-2000:]
    assert len(re.findall(r"100%\|.*\| 2/2 \[\d\d:\d\d<00:00", err)) >= 2, err[-2000:]
    assert out.is_dir() and not partial_dir(out).exists()
    before, stage1, final = _weights(student), _weights(out / "stages" / "stage-1-embeddings" / "model"), _weights(out)
    emb = "model.embed_tokens.weight"
    assert not torch.equal(before[emb], stage1[emb])
    for name in before:  # stage 1 changes the (tied) embedding only
        if name != emb and name != "lm_head.weight":
            assert torch.equal(before[name], stage1[name]), name
    assert not torch.equal(stage1["model.layers.0.mlp.up_proj.weight"], final["model.layers.0.mlp.up_proj.weight"])
    log = json.loads((out / "distill_log.json").read_text())
    assert [s["stage"] for s in log["stages"]] == ["stage-1-embeddings", "stage-2-full"]
    assert [s["trainable_tensors"] for s in log["stages"]] == [1, len(before) - 1]  # lm_head is tied to embed_tokens
    assert all(any("loss" in e for e in s["log_history"]) for s in log["stages"])
    cache = load_file(out / "teacher-cache" / "teacher-topk-00000.safetensors")
    assert cache["logprobs"].shape == (8, 16, 16) and cache["tail"].shape == (8, 16) and report["sequences"] == 8
    assert (out / "xtok_provenance.json").is_file() and (out / "tokenizer.json").is_file()


class Kill(TrainerCallback):
    def __init__(self, at):
        self.at = at

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.at:
            raise KeyboardInterrupt(f"killed at step {self.at}")


def _losses(out):
    hist = json.loads((out / "distill_log.json").read_text())["stages"][0]["log_history"]
    return {e["step"]: e["loss"] for e in hist if "loss" in e}


def test_killed_run_resumes_on_the_same_loss_curve(tiny_model_dir, tmp_path, data_file, capfd):
    student, teacher = tiny_model_dir("smollm2-135m"), tiny_model_dir("smollm2-135m", seed=1)
    stages = [{"train": "full", "steps": 6, "learning_rate": 1e-3, "scheduler": "linear"}]
    ref_out, _ = run_distill(_cfg(tmp_path / "a", student, teacher, data_file, stages=stages))
    cfg = _cfg(tmp_path / "b", student, teacher, data_file, stages=stages)
    capfd.readouterr()
    with pytest.raises(KeyboardInterrupt):
        run_distill(cfg, callbacks=(Kill(5),))
    quiet = capfd.readouterr()  # as a library: no bars of ours (transformers' weight loading has its own), no loss dicts
    bars = [line for line in re.split(r"[\r\n]", quiet.err) if "%|" in line and "Loading weights" not in line]
    assert not bars and "'loss'" not in quiet.out, (bars, quiet.out)
    out = tmp_path / "b" / "out"
    assert not out.exists() and partial_dir(out).is_dir()  # nothing half-written in place
    out, report = run_distill(cfg)
    assert report["stages"][0]["resumed_from"] == "checkpoint-4"
    ref, got = _losses(ref_out), _losses(out)
    assert sorted(got) == sorted(ref) == [1, 2, 3, 4, 5, 6]
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-5), step
    torch.testing.assert_close(_weights(out)["model.norm.weight"], _weights(ref_out)["model.norm.weight"])


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_cached_full_topk_equals_the_online_teacher(real_tokenizer, tmp_path, tau):
    """A cache of the full vocabulary built at the loss's temperature gives the online teacher's loss; a cache of
    another temperature is refused."""
    from transformers import TrainingArguments

    from tests.conftest import build_tiny
    from xtok.distill.teacher_cache import teacher_topk

    tok = real_tokenizer("smollm2-135m")
    student, teacher = build_tiny("llama", tok, seed=2), build_tiny("llama", tok, seed=1)
    blocks = pack_documents(tok, TEXTS, seq_len=12, max_sequences=2)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    online = DistillTrainer(model=student, args=args, teacher=teacher, loss="jsd", beta=0.3, temperature=tau)
    cached = DistillTrainer(model=student, args=args, loss="jsd", beta=0.3, temperature=tau)
    full = teacher_topk(teacher, blocks, k=teacher.config.vocab_size, temperature=tau)  # K = V: the tail is empty
    batch = torch.utils.data.default_collate([BlockDataset(blocks, full)[i] for i in range(2)])
    plain = {k: v for k, v in batch.items() if not k.startswith("teacher")}
    assert_float32_close(cached.compute_loss(student, batch), online.compute_loss(student, plain),
                         terms=teacher.config.vocab_size, what="loss")
    with pytest.raises(ValueError, match="needs a teacher"):
        cached.compute_loss(student, plain)
    other = DistillTrainer(model=student, args=args, loss="jsd", beta=0.3, temperature=tau + 1)
    with pytest.raises(ValueError, match=f"taken at temperature {tau} but the loss runs at temperature {tau + 1}"):
        other.compute_loss(student, batch)


def test_teacher_cache_is_keyed_on_temperature_and_stores_the_exact_tail(real_tokenizer, tmp_path):
    from tests.conftest import build_tiny
    from xtok.distill.teacher_cache import build_cache

    tok = real_tokenizer("smollm2-135m")
    teacher = build_tiny("llama", tok, seed=1)
    blocks = pack_documents(tok, TEXTS, seq_len=12, max_sequences=3)
    folder = tmp_path / "cache"
    at_1 = build_cache(folder, teacher, "t", blocks, 4, batch_size=2)
    at_2 = build_cache(folder, teacher, "t", blocks, 4, batch_size=2, temperature=2.0)  # another key: rebuilt
    again = build_cache(folder, None, "t", blocks, 4, temperature=2.0)  # reused: no teacher needed
    assert (at_1.temperature, at_2.temperature, again.temperature) == (1.0, 2.0, 2.0)
    at_1, at_2, again = at_1.load(), at_2.load(), again.load()
    for name in ("logprobs", "ids", "tail"):
        assert torch.equal(getattr(again, name), getattr(at_2, name))
    with torch.no_grad():
        logits = teacher(input_ids=blocks).logits.double()
    for tau, top in ((1.0, at_1), (2.0, at_2)):  # float64: the tail is the mass outside the top 4, at tau
        p = torch.softmax(logits / tau, -1)
        outside = p.sum(-1) - p.gather(-1, top.ids.long()).sum(-1)
        torch.testing.assert_close(top.logprobs.double(), p.gather(-1, top.ids.long()).log(), rtol=0.0,
                                   atol=8 * EPS32 * (1 + float(p.log().abs().max())))
        torch.testing.assert_close(top.tail.double().exp(), outside, rtol=8 * EPS32 * (1 + float(p.log().abs().max())),
                                   atol=0.0)


def test_a_bf16_teacher_cache_runs_the_teacher_under_autocast_and_is_keyed_apart(real_tokenizer, tmp_path):
    """bf16: the cache holds the top-k of the teacher's bf16-autocast logits (checked against that forward pass run
    directly, softmax in float64), not float32's, and a float32 cache in the same folder is not reused for it."""
    from tests.conftest import build_tiny
    from xtok.distill.teacher_cache import build_cache

    tok = real_tokenizer("smollm2-135m")
    teacher = build_tiny("llama", tok, seed=1)
    blocks = pack_documents(tok, TEXTS, seq_len=12, max_sequences=3)
    folder = tmp_path / "cache"
    exact = build_cache(folder, teacher, "t", blocks, 4, batch_size=2).load()
    with pytest.raises(ValueError, match="no teacher cache"):
        build_cache(folder, None, "t", blocks, 4, bf16=True)  # the float32 cache is not the bf16 one
    half = build_cache(folder, teacher, "t", blocks, 4, batch_size=2, bf16=True)
    again = build_cache(folder, None, "t", blocks, 4, bf16=True).load()  # now reused: no teacher needed
    half = half.load()
    assert torch.equal(again.logprobs, half.logprobs)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # the cache's batches: the same bf16 kernels
        logits = torch.cat([teacher(input_ids=b, attention_mask=torch.ones_like(b)).logits
                            for b in blocks.long().split(2)])
    logp = torch.log_softmax(logits.double(), -1)
    torch.testing.assert_close(half.logprobs.double(), logp.gather(-1, half.ids.long()), rtol=0.0,
                               atol=8 * EPS32 * (1 + float(logp.abs().max())))
    assert not torch.equal(half.logprobs, exact.logprobs)  # autocast ran: bf16 products round far coarser


def test_bf16_precision_trains_under_autocast_with_float32_weights(tiny_model_dir, tmp_path, data_file, caplog):
    """precision bf16: the products run in bf16 (the losses move off float32's by about bf16's rounding, which they
    would not without autocast), the fused head among them (it used to fall back to the full logits: its check
    compared a float32 head with the forward's bf16 logits), the weights trained and saved stay float32."""
    student, teacher = tiny_model_dir("smollm2-135m"), tiny_model_dir("smollm2-135m", seed=1)
    runs = {}
    for precision in ("float32", "bf16"):
        stages = [{"train": "full", "steps": 2, "learning_rate": 1e-3, "scheduler": "constant"}]
        cfg = _cfg(tmp_path / precision, student, teacher, data_file, stages=stages, precision=precision)
        with caplog.at_level("WARNING"):
            out, _ = run_distill(cfg)
        assert "full logits instead" not in caplog.text
        runs[precision] = _losses(out)
        assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.float32}
    f32, bf16 = runs["float32"], runs["bf16"]
    assert f32.keys() == bf16.keys() and len(f32) == 2
    for step in f32:  # bf16 keeps 8 significant bits: the loss of one batch moves by a few parts in a thousand
        assert f32[step] != bf16[step] and bf16[step] == pytest.approx(f32[step], rel=3e-2)


@pytest.mark.parametrize("fast", [True, False])
def test_precision_auto_takes_bf16_only_where_it_is_fast(monkeypatch, caplog, fast):
    import xtok.utils.hardware as hw

    monkeypatch.setattr(hw, "fast_bf16", lambda: fast)
    assert hw.use_bf16("auto") is fast and hw.use_bf16("float32") is False
    with caplog.at_level("WARNING"):
        assert hw.use_bf16("bf16") is True
    assert ("far slower than float32" in caplog.text) is not fast


def test_lora_stage_and_plain_ce_without_teacher(tiny_model_dir, tmp_path, data_file):
    student = tiny_model_dir("smollm2-135m")
    cfg = _cfg(tmp_path, student, None, data_file, loss="ce",
               stages=[{"train": "lora", "steps": 2, "learning_rate": 1e-2, "lora_rank": 4, "lora_alpha": 8}])
    out, report = run_distill(cfg)
    assert report["teacher_cache_top_k"] is None and not (out / "teacher-cache").exists()
    before, after = _weights(student), _weights(out)
    assert before.keys() == after.keys()  # adapters merged: a plain model again
    assert not torch.equal(before["model.layers.0.self_attn.q_proj.weight"], after["model.layers.0.self_attn.q_proj.weight"])
    torch.testing.assert_close(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])


def test_bad_input(tiny_model_dir, tmp_path, data_file):
    student, other = tiny_model_dir("smollm2-135m"), tiny_model_dir("qwen2.5-coder-0.5b")
    with pytest.raises(ValueError, match="transplant first"):
        run_distill(_cfg(tmp_path, student, other, data_file))
    with pytest.raises(ValueError, match="needs a teacher"):
        _cfg(tmp_path, student, None, data_file)
    cfg = _cfg(tmp_path, student, student, data_file, stages=[{"train": "embeddings", "steps": 3, "learning_rate": 1e-3}])
    with pytest.raises(KeyboardInterrupt):
        run_distill(cfg, callbacks=(Kill(1),))
    changed = _cfg(tmp_path, student, student, data_file, seq_len=8)
    with pytest.raises(ValueError, match="interrupted run of another config"):
        run_distill(changed)
    run_distill(_cfg(tmp_path, student, student, data_file, seq_len=8, overwrite=True,
                     stages=[{"train": "embeddings", "steps": 1, "learning_rate": 1e-3}]))
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_distill(changed)


def test_uld_baseline_keeps_the_students_tokenizer(tiny_model_dir, tmp_path, data_file):
    """ULD trains a student against a teacher with another vocabulary; the student keeps its own."""
    student, teacher = tiny_model_dir("smollm2-135m"), tiny_model_dir("qwen2.5-coder-0.5b")
    cfg = _cfg(tmp_path, student, teacher, data_file, loss="uld", ce_weight=0.5,
               stages=[{"train": "full", "steps": 2, "learning_rate": 1e-3}])
    out, report = run_distill(cfg)
    assert report["teacher_cache_top_k"] is None and report["stages"][0]["train_loss"] > 0
    assert AutoModelForCausalLM.from_pretrained(out).config.vocab_size == AutoModelForCausalLM.from_pretrained(student).config.vocab_size


def test_teacher_tokenization_reads_the_same_text(real_tokenizer):
    from xtok.distill.data import teacher_tokenization

    s_tok, t_tok = real_tokenizer("smollm2-135m"), real_tokenizer("qwen2.5-coder-0.5b")
    blocks = pack_documents(s_tok, TEXTS, seq_len=12)
    ids, mask = teacher_tokenization(s_tok, t_tok, blocks)
    assert ids.shape[0] == len(blocks) and mask[:, 0].all()
    for i in range(len(blocks)):
        row = ids[i][mask[i].bool()].tolist()
        assert row[0] == t_tok.convert_tokens_to_ids("<|endoftext|>")  # Qwen's start token: no BOS, so EOS
        assert t_tok.decode(row[1:]) == s_tok.decode(blocks[i].tolist(), skip_special_tokens=True)


def test_on_policy_batches_are_student_samples_scored_by_the_teacher(real_tokenizer, tmp_path):
    from transformers import TrainingArguments

    from tests.conftest import build_tiny

    tok = real_tokenizer("smollm2-135m")
    student, teacher = build_tiny("llama", tok, seed=2), build_tiny("llama", tok, seed=1)
    blocks = pack_documents(tok, TEXTS, seq_len=12, max_sequences=2)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, seed=3)
    trainer = DistillTrainer(model=student, args=args, teacher=teacher, on_policy=1.0, prompt_tokens=5)
    batch = torch.utils.data.default_collate([BlockDataset(blocks)[i] for i in range(2)])
    torch.manual_seed(0)
    sampled = trainer._student_samples(student, batch)
    assert sampled["input_ids"].shape == batch["input_ids"].shape  # same length: the token count still holds
    assert torch.equal(sampled["input_ids"][:, :5], batch["input_ids"][:, :5])
    assert not torch.equal(sampled["input_ids"][:, 5:], batch["input_ids"][:, 5:])
    assert torch.equal(sampled["labels"], sampled["input_ids"])
    draws = []
    for step in range(40):
        trainer.state.global_step = step
        draws.append(trainer._coin())
    trainer.on_policy = 0.25
    quarter = []
    for step in range(400):
        trainer.state.global_step = step
        quarter.append(trainer._coin())
    assert all(draws) and 0.15 < sum(quarter) / 400 < 0.35
    with pytest.raises(ValueError, match="teacher online"):
        DistillTrainer(model=student, args=args, on_policy=0.5)
    with pytest.raises(ValueError, match="teacher_cache.top_k: null"):
        config_from_dict({"recipe": "distill", "student": "s", "teacher": "t", "out": "o", "on_policy": {"lmbda": 0.5},
                          "stages": [{"train": "full", "steps": 1, "learning_rate": 1e-3}]})


@pytest.mark.parametrize("how", ["accelerate launch (env)", "accelerator state"])
def test_an_fsdp_launch_is_refused_before_any_model_loads(tmp_path, data_file, monkeypatch, how):
    """FSDP is not offered (only rank 0 would save the sharded model, fused_head calls the unwrapped head): a launch
    under it stops with the DDP command to use, before a model is loaded."""
    import xtok.distill.run as run_mod

    if how.endswith("(env)"):
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets for distributed_type: FSDP
    else:
        from accelerate.state import AcceleratorState
        from accelerate.utils import DistributedType

        monkeypatch.setattr(AcceleratorState, "_shared_state", {"distributed_type": DistributedType.FSDP})

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the FSDP launch was refused")

    monkeypatch.setattr(run_mod, "load_model", no_model)
    monkeypatch.setattr(run_mod, "load_tokenizer", no_model)
    cfg = _cfg(tmp_path, tmp_path / "student", tmp_path / "teacher", data_file)
    with pytest.raises(ValueError, match=r"FSDP.*configs/accelerate/gpu_ddp\.yaml.*torchrun"):
        run_distill(cfg)
    assert not (tmp_path / "out").exists() and not partial_dir(tmp_path / "out").exists()


def _rss_anon_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    pytest.skip("no RssAnon in /proc/self/status")


def test_teacher_cache_is_read_lazily_within_a_memory_budget(tmp_path):
    """A cache of 4 shards (68 MB) read row by row in random order through the dataset: anonymous memory grows by
    far less than one shard (17 MB; the old loader concatenated every shard), and every row read is the row
    written."""
    import gc

    from safetensors.torch import save_file

    from xtok.distill.teacher_cache import INDEX, cache_key, load_cache

    n, t, k, per = 512, 128, 128, 128
    blocks = torch.arange(n * t).view(n, t) % 1000
    key = cache_key("synthetic", blocks, k)
    folder = tmp_path / "cache"
    folder.mkdir()
    shards, probes = [], {}
    for i, s in enumerate(range(0, n, per)):
        g = torch.Generator().manual_seed(i)
        part = {"logprobs": torch.randn(per, t, k, generator=g), "ids": torch.randint(0, 1000, (per, t, k), generator=g,
                                                                                        dtype=torch.int32),
                "tail": torch.randn(per, t, generator=g)}
        probes[s + 5] = {f: v[5].clone() for f, v in part.items()}
        save_file(part, folder / f"s{i}.safetensors")
        shards.append(f"s{i}.safetensors")
        del part
    (folder / INDEX).write_text(json.dumps({"key": key, "shards": shards}))
    gc.collect()
    before = _rss_anon_mb()
    cache = load_cache(folder, key)
    data = BlockDataset(blocks, cache)
    peak = before
    for i in torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist():
        item = data[i]
        if i in probes:
            for f in ("logprobs", "ids", "tail"):
                assert torch.equal(item[f"teacher_topk_{f}"], probes[i][f].to(item[f"teacher_topk_{f}"].dtype)), (i, f)
        peak = max(peak, _rss_anon_mb())
    assert cache.logprobs.shape == (n, t, k) and len(cache.ids) == n
    assert peak - before < 8, f"reading the cache grew anonymous memory by {peak - before:.1f} MB"
    with pytest.raises(IndexError):
        cache.logprobs[n]
    assert load_cache(folder, {**key, "top_k": 7}) is None  # another key: rebuilt
