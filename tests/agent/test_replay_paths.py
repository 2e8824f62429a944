"""A replay abstracts the run dir as a path, not as a string prefix: inputs in a sibling folder whose name starts with
the run dir's name (out/x and out/x-inputs) stay themselves, so a replay elsewhere digests the same conversation."""

from tao_finetune.agent.loop import replace_path, request_digest
from tao_finetune.agent.replay import normalize


def test_the_run_dir_is_replaced_only_as_a_whole_path():
    text = '/w/run at /w/run/ckpt, "/w/run"; /w/run-inputs/m /w/runs /w/run.2/x /w/run.'
    assert replace_path(text, "/w/run", "<run>") == '<run> at <run>/ckpt, "<run>"; /w/run-inputs/m /w/runs /w/run.2/x <run>.'
    assert replace_path(text, "", "<run>") == text


def test_a_relocated_run_digests_and_normalizes_the_same():
    def msgs(run: str) -> list[dict]:
        return [{"role": "user", "content": f"model /w/run-inputs/tiny at {run}/checkpoints/final, logs in {run}."}]

    assert request_digest(msgs("/w/run"), "/w/run") == request_digest(msgs("/elsewhere/replay"), "/elsewhere/replay")
    assert normalize(msgs("/w/run")[0]["content"], ("/w/run",)) == normalize(msgs("/r/x")[0]["content"], ("/r/x",))
    assert "/w/run-inputs/tiny" in normalize(msgs("/w/run")[0]["content"], ("/w/run",))
