"""The dashboard's registry of searches, and the pages' HTML: names that cannot be forged,
retries that keep their entry, and text that cannot become markup."""

import json

from cirrus_airflow.dashboard import registry
from cirrus_airflow.dashboard.report import embed_json, page, report_html
from cirrus_airflow.storage import Storage


def _entry(run_id="manual__1", output="/data/tune"):
    return registry.RunEntry(dag_id="dag", run_id=run_id, task_id="tune", map_index=-1, output=output)


def test_entries_are_found_by_their_task_instance_and_newest_first(tmp_path):
    storage, folder = Storage(), str(tmp_path)
    first = _entry("run_1")
    registry.register(storage, folder, first)
    stamped = registry.find(storage, folder, first.key).registered_at
    assert stamped > 0
    second = registry.RunEntry(**{**first.__dict__, "run_id": "run_2", "registered_at": stamped + 1})
    registry.register(storage, folder, second)
    assert [e.run_id for e in registry.list_runs(storage, folder)] == ["run_2", "run_1"]
    assert registry.find(storage, folder, first.key).output == "/data/tune"
    assert first.key == registry.run_key("dag", "run_1", "tune", -1) != registry.run_key("dag", "run_1", "tune", 0)


def test_a_file_cannot_pass_itself_off_as_another_search(tmp_path):
    storage, folder = Storage(), str(tmp_path)
    real = _entry()
    forged_key = registry.run_key("other_dag", "r", "t")
    (tmp_path / f"{forged_key}.json").write_text(json.dumps({**real.__dict__, "registered_at": 1.0}))
    (tmp_path / "nonsense.json").write_text("{}")
    odd = {**real.__dict__, "map_index": "x"}
    (tmp_path / f"{registry.run_key('dag', 'manual__1', 'tune', -1)}.json").write_text(json.dumps(odd))
    assert registry.find(storage, folder, forged_key) is None
    assert registry.find(storage, folder, "../../etc/passwd") is None
    assert registry.list_runs(storage, folder) == []  # (and the one with a map index of "x" is skipped too)


def test_text_from_a_search_cannot_become_markup():
    hostile = "</script><script>alert(1)</script>"
    assert "</script>" not in embed_json({"id": hostile})
    html = page("t", "", subtitle=hostile, links=[(hostile, "javascript:x\"><b>")])
    assert "<script>alert(1)" not in html and '"><b>' not in html
    results = {"configs": [{"id": hostile, "params": {"a": hostile}, "status": "finished", "metric": 0.5,
                            "curve": []}], "model": "lr", "metric": "test_logloss", "best": None}
    assert "<script>alert(1)" not in report_html(results)


def test_diverged_losses_become_null_at_any_depth():
    from cirrus_airflow.tuning.layout import finite

    doc = {"metric": float("nan"), "curve": [{"test_loss": float("inf")}, {"test_loss": 0.5}], "n": 3,
           "summary": {"train_loss": float("-inf"), "ok": [1.0, float("nan")]}}
    assert finite(doc) == {"metric": None, "curve": [{"test_loss": None}, {"test_loss": 0.5}], "n": 3,
                           "summary": {"train_loss": None, "ok": [1.0, None]}}
    json.dumps(finite(doc), allow_nan=False)
