"""The two teachers and ``distill teacher-train`` with the tiny backbone on tiny synthetic data."""

import json

import pytest
import torch
from click.testing import CliRunner

from cli import main
from distill.config import PrepareConfig, to_dict
from distill.data import Dataset
from distill.prepare import run as prepare
from distill.training import save_checkpoint, write_json
from student.run import load_run
from teacher.config import TeacherTrainConfig
from teacher.model import build_teacher, load_teacher, trainable_state
from teacher.prompts import E4SREC_PROMPT, HISTORY_TOKEN, MOE_LORA_PROMPT

TINY_TEACHER = [
    "--epochs",
    "1",
    "--positions",
    "1",
    "--max-len",
    "5",
    "--batch-size",
    "8",
    "--device",
    "cpu",
    "--eval-batch-size",
    "32",
]


def config(setup, **changes):
    return TeacherTrainConfig(
        data=str(setup / "data"),
        sasrec=str(setup / "sasrec"),
        output=str(setup / "unused"),
        max_len=5,
        device="cpu",
        **changes,
    )


def make(setup, **changes):
    data = Dataset(setup / "data")
    torch.manual_seed(0)
    return build_teacher(
        config(setup, **changes), data, load_run(setup / "sasrec", data), torch.device("cpu")
    ), data


def histories(data, n=6):
    return torch.from_numpy(data.prefix_samples(1, 5).histories[:n])


def randomize(model):
    """Fresh adapters change nothing (lora_B = 0); give every trained weight a value."""
    with torch.no_grad():
        for p in trainable_state(model).values():
            p.normal_(0, 0.05)


@pytest.mark.parametrize("kind", ["moe-lora", "e4srec"])
def test_scores_cover_the_catalogue(setup, kind):
    teacher, data = make(setup, teacher=kind)
    scores = teacher(histories(data))
    assert scores.shape == (6, data.num_items + 1) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()


def test_history_slots_hold_the_projected_sasrec_states_in_order(setup):
    teacher, data = make(setup, teacher="moe-lora")
    model = teacher.model
    history = histories(data)
    captured = {}

    def grab(module, args, kwargs):
        captured["embeds"] = kwargs["inputs_embeds"]

    handle = model.backbone.register_forward_pre_hook(grab, with_kwargs=True)
    prompts = teacher.prompts(history)
    with torch.no_grad():
        model(prompts, history)
    handle.remove()
    with torch.no_grad():
        expected = model.projector(model.sasrec(history)[history != 0])  # (S, H), row-major
    embeds = captured["embeds"]
    for b in range(len(history)):
        slots = (prompts.input_ids[b] == model.placeholder_id).nonzero().squeeze(1)
        assert len(slots) == int((history[b] != 0).sum())
        first = int((history[:b] != 0).sum())
        for i, position in enumerate(slots):
            torch.testing.assert_close(embeds[b, position], expected[first + i])


def test_titles_precede_their_slots(setup):
    teacher, data = make(setup, teacher="moe-lora", titles=True)
    tokenizer_ids = teacher.prompts._item_ids
    assert tokenizer_ids is not None
    item = int(histories(data)[0, -1])
    assert tokenizer_ids[item][-2] == teacher.model.placeholder_id  # title tokens, slot, separator
    bare, _ = make(setup, teacher="moe-lora", titles=False)
    assert bare.prompts._item_ids is None


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"teacher": "moe-lora"}, {"lora_", "projector.", "gate."}),
        ({"teacher": "moe-lora", "train_sasrec": True}, {"lora_", "projector.", "gate.", "sasrec."}),
        ({"teacher": "e4srec"}, {"lora_", "projector.", "head."}),
    ],
)
def test_only_adapters_and_new_modules_get_gradients(setup, changes, expected):
    teacher, data = make(setup, **changes)
    randomize(teacher.model)
    teacher.model.train()
    teacher(histories(data)).logsumexp(-1).sum().backward()
    with_grad = {
        n for n, p in teacher.model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
    }
    assert with_grad, "nothing received a gradient"
    for name in with_grad:
        assert any(key in name for key in expected), f"{name} should be frozen"
    for key in expected:
        assert any(key in name for name in with_grad), f"no gradient reached {key}*"
    frozen = {n for n, p in teacher.model.named_parameters() if not p.requires_grad}
    assert any("embed_tokens" in n for n in frozen)


@pytest.mark.parametrize("kind", ["moe-lora", "e4srec"])
def test_save_load_round_trip_gives_identical_scores(setup, tmp_path, kind):
    teacher, data = make(setup, teacher=kind, train_sasrec=kind == "moe-lora")
    randomize(teacher.model)
    teacher.model.eval()
    cfg = config(setup, teacher=kind, train_sasrec=kind == "moe-lora")
    run_config = {
        "kind": f"teacher-{kind}",
        "dataset": {"fingerprint": data.fingerprint},
        "sasrec_run": str(setup / "sasrec"),
        "train": to_dict(cfg),
    }
    save_checkpoint(tmp_path / "best", trainable_state(teacher.model), run_config)
    write_json(tmp_path / "config.json", run_config)
    loaded = load_teacher(tmp_path, data)
    h = histories(data)
    with torch.no_grad():
        torch.testing.assert_close(loaded(h), teacher(h), rtol=0, atol=0)


def test_e4srec_prompt_tokens_come_from_the_tokenizer(setup):
    teacher, data = make(setup, teacher="e4srec")
    tokenizer_prefix = teacher.prompts.prefix
    h = histories(data, 2)
    prompts = teacher.prompts(h)
    row = prompts.input_ids[0][prompts.attention_mask[0].bool()].tolist()
    assert row[: len(tokenizer_prefix)] == tokenizer_prefix
    assert row[-len(teacher.prompts.suffix) :] == teacher.prompts.suffix
    assert row.count(teacher.model.placeholder_id) == int((h[0] != 0).sum())
    # the texts, not fixed ids, are what the prompts are made of
    assert len(tokenizer_prefix) > 3 and E4SREC_PROMPT[0] != MOE_LORA_PROMPT[0]
    assert HISTORY_TOKEN not in E4SREC_PROMPT[0]


def test_prompts_are_left_padded_with_real_positions(setup):
    teacher, data = make(setup)
    prompts = teacher.prompts(histories(data))
    assert (prompts.attention_mask[:, -1] == 1).all()
    for b in range(len(prompts.input_ids)):
        real = prompts.attention_mask[b].bool()
        assert prompts.position_ids[b][real].tolist() == list(range(int(real.sum())))


@pytest.mark.parametrize("kind", ["moe-lora", "e4srec"])
def test_teacher_train_end_to_end(setup, tmp_path, kind):
    runner = CliRunner()
    run = tmp_path / kind
    result = runner.invoke(
        main,
        [
            "teacher-train",
            "--data",
            str(setup / "data"),
            "--sasrec",
            str(setup / "sasrec"),
            "--llm",
            "tiny",
            "--output",
            str(run),
            "--teacher",
            kind,
            *TINY_TEACHER,
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_epoch"] == 1 and 0 <= metrics["test"]["ndcg@10"] <= 1
    saved = json.loads((run / "config.json").read_text())
    assert saved["kind"] == f"teacher-{kind}" and saved["train"]["llm"] == "tiny"
    weights = (run / "best" / "model.safetensors").stat().st_size
    assert weights < 2_000_000  # only what was trained, not the backbone
    result = runner.invoke(
        main, ["evaluate", "--run", str(run), "--data", str(setup / "data"), "--split", "test"]
    )
    assert result.exit_code == 0, result.output
    assert f"{metrics['test']['ndcg@10']:.4f}" in result.output


def test_teacher_resume_continues_from_the_last_epoch(setup, tmp_path):
    runner = CliRunner()
    base = [
        "teacher-train",
        "--data",
        str(setup / "data"),
        "--sasrec",
        str(setup / "sasrec"),
        "--output",
        str(tmp_path / "run"),
        *TINY_TEACHER,
    ]
    assert runner.invoke(main, base).exit_code == 0
    result = runner.invoke(main, [*base, "--epochs", "2", "--resume"])
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--llm", "/nonexistent/model"], "cannot load backbone"),
        (["--target-modules", "nope_proj"], "no nn.Linear module matches"),
        (["--teacher", "gpt"], "Invalid value for '--teacher'"),
        (["--experts", "3"], "must be divisible by experts"),
    ],
)
def test_bad_options_are_one_line_errors(setup, tmp_path, args, message):
    result = CliRunner().invoke(
        main,
        [
            "teacher-train",
            "--data",
            str(setup / "data"),
            "--sasrec",
            str(setup / "sasrec"),
            "--output",
            str(tmp_path / "run"),
            *TINY_TEACHER,
            *args,
        ],
    )
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output


def test_sasrec_run_from_another_dataset_is_refused(setup, tmp_path):
    other = tmp_path / "other"
    prepare(PrepareConfig(output=str(other), synthetic=True, num_users=40, num_items=30, seed=2))
    result = CliRunner().invoke(
        main,
        [
            "teacher-train",
            "--data",
            str(other),
            "--sasrec",
            str(setup / "sasrec"),
            "--output",
            str(tmp_path / "run"),
            *TINY_TEACHER,
        ],
    )
    assert result.exit_code != 0
    assert "another dataset" in result.output
    assert not (tmp_path / "run").exists()


def test_teacher_train_options_reach_the_run(setup, tmp_path):
    run = tmp_path / "run"
    args = [
        "teacher-train",
        "--data",
        str(setup / "data"),
        "--sasrec",
        str(setup / "sasrec"),
        "--output",
        str(run),
        *TINY_TEACHER,
        "--dtype",
        "bfloat16",
        "--llm-layers",
        "1",
        "--grad-accum",
        "2",
        "--no-titles",
        "--eval-users",
        "10",
        "--train-sasrec",
        "--experts",
        "2",
        "--lora-r",
        "4",
        "--lora-alpha",
        "8",
        "--target-modules",
        "q_proj,v_proj",
        "--warmup",
        "0.5",
        "--weight-decay",
        "0.01",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "config.json").read_text())["train"]
    assert saved["dtype"] == "bfloat16" and saved["llm_layers"] == 1 and saved["grad_accum"] == 2
    assert saved["titles"] is False and saved["train_sasrec"] is True and saved["eval_users"] == 10
    assert saved["target_modules"] == ["q_proj", "v_proj"] and saved["r"] == 4 and saved["experts"] == 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert "(10 users)" in metrics["selected_on"]
    teacher = load_teacher(run, Dataset(setup / "data"))
    assert (
        sum(1 for n, _ in teacher.model.named_modules() if n.endswith(("q_proj", "v_proj"))) == 2
    )  # one layer
    assert teacher.prompts._item_ids is None
