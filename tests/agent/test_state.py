"""The agent's state table, driven directly: config diffs, every transition, the races
(a config edit during a load, a model list older than a load) and readiness."""

from kubetune.workers.agent.config import AdapterConfig
from kubetune.workers.agent.state import (
    FAILED,
    LOADED,
    LOADING,
    PENDING,
    AdapterTable,
    Load,
    Reload,
    Served,
    Unload,
    backoff,
    diff_config,
)

DIR = "/models/adapters"
SHA_A = "a" * 64
SHA_B = "b" * 64


def spec(name: str, uri: str | None = None, sha: str | None = None) -> AdapterConfig:
    return AdapterConfig(name=name, uri=uri or f"s3://bucket/{name}", sha256=sha)


def served(name: str, identity: str = SHA_A) -> Served:
    return Served(f"s3://bucket/{name}", identity, f"{DIR}/{name}-{identity[:16]}")


def load(table: AdapterTable, name: str, identity: str = SHA_A, now: float = 0.0) -> Served:
    """Run the next action, expected to be a Load of `name`, to success."""
    action = table.next_action(now)
    assert isinstance(action, Load) and action.name == name, action
    table.start(action, "downloading")
    assert table.records[name].state == LOADING
    version = Served(action.spec.uri, identity, f"{DIR}/{name}-{identity[:16]}")
    table.loaded(name, action.spec, version, 1.5, 1_700_000_000.0)
    return table.records[name].served


def test_diff_names_added_changed_and_removed():
    current = {"a": spec("a"), "b": spec("b"), "c": spec("c")}
    diff = diff_config(current, [spec("a"), spec("b", sha=SHA_B), spec("d")])
    assert [a.name for a in diff.added] == ["d"]
    assert [a.name for a in diff.changed] == ["b"]
    assert diff.removed == ("c",)
    assert diff_config(current, current.values()).empty


def test_new_adapters_load_in_config_order_and_settle():
    table = AdapterTable()
    table.apply([spec("b"), spec("a")])
    assert table.counts() == {PENDING: 2, LOADING: 0, LOADED: 0, FAILED: 0}
    load(table, "b")
    load(table, "a")
    assert table.next_action(0.0) is None
    record = table.records["a"]
    assert (record.state, record.message, record.identity) == (LOADED, None, SHA_A)
    row = table.snapshot()[1]
    assert row == {"name": "a", "uri": "s3://bucket/a", "sha256": SHA_A, "state": LOADED,
                   "message": None, "loadSeconds": 1.5, "loadedAt": "2023-11-14T22:13:20Z"}


def test_permanent_failure_waits_for_a_config_change():
    table = AdapterTable()
    table.apply([spec("a")])
    action = table.next_action(0.0)
    table.start(action, "downloading")
    table.failed("a", action.spec, "integrity check failed: x", transient=False, now=0.0)
    record = table.records["a"]
    assert (record.state, record.message, record.retry_at) == (FAILED, "integrity check failed: x", None)
    assert table.next_action(1e9) is None
    table.apply([spec("a", uri="s3://bucket/fixed")])
    assert table.records["a"].state == PENDING
    assert table.next_action(0.0) == Load("a", spec("a", uri="s3://bucket/fixed"))


def test_transient_failure_retries_with_backoff():
    table = AdapterTable()
    table.apply([spec("a")])
    for attempt in (1, 2, 3):
        action = table.next_action(1000.0 * attempt)
        assert isinstance(action, Load)
        table.start(action, "downloading")
        table.failed("a", action.spec, "storage down", transient=True, now=1000.0 * attempt)
        record = table.records["a"]
        assert record.retry_at == 1000.0 * attempt + backoff(attempt)
        assert record.message == f"storage down; retrying in {backoff(attempt):.0f}s"
        assert table.next_action(1000.0 * attempt + 0.1) is None
    assert [backoff(n) for n in (1, 2, 3, 20)] == [5.0, 10.0, 20.0, 300.0]


def test_replacement_keeps_the_old_version_until_the_new_one_is_in():
    table = AdapterTable()
    table.apply([spec("a", sha=SHA_A)])
    old = load(table, "a", SHA_A)
    table.apply([spec("a", sha=SHA_B)])
    record = table.records["a"]
    assert (record.state, record.served) == (PENDING, old)
    action = table.next_action(0.0)
    table.start(action, "downloading")
    new = Served(action.spec.uri, SHA_B, f"{DIR}/a-{SHA_B[:16]}")
    replaced = table.loaded("a", action.spec, new, 1.0, 0.0)
    assert replaced == old  # its folder can go now
    assert (record.state, record.identity, record.served.path) == (LOADED, SHA_B, new.path)


def test_failed_replacement_says_the_previous_version_still_serves():
    table = AdapterTable()
    table.apply([spec("a", sha=SHA_A)])
    old = load(table, "a", SHA_A)
    table.apply([spec("a", uri="s3://bucket/bad")])
    action = table.next_action(0.0)
    table.start(action, "downloading")
    table.failed("a", action.spec, "pickle files are refused", transient=False, now=0.0)
    record = table.records["a"]
    assert record.state == FAILED
    assert record.message == (
        f"pickle files are refused; still serving the previous version {SHA_A[:16]}"
    )
    assert record.served == old


def test_config_edit_during_a_load_loads_the_new_spec_next():
    table = AdapterTable()
    table.apply([spec("a")])
    action = table.next_action(0.0)
    table.start(action, "downloading")
    table.apply([spec("a", sha=SHA_B)])  # while the first version is in flight
    assert not table.wants("a", action.spec)
    table.loaded("a", action.spec, served("a"), 1.0, 0.0)
    record = table.records["a"]
    assert record.state == PENDING and record.served is not None
    assert table.next_action(0.0) == Load("a", spec("a", sha=SHA_B))


def test_removed_during_a_load_is_unloaded_after_it():
    table = AdapterTable()
    table.apply([spec("a")])
    action = table.next_action(0.0)
    table.apply([])
    table.loaded("a", action.spec, served("a"), 1.0, 0.0)
    unload = table.next_action(0.0)
    assert isinstance(unload, Unload) and unload.name == "a"
    table.unloaded("a", unload.served)
    assert table.next_action(0.0) is None and table.records == {}


def test_removed_adapter_is_unloaded_and_a_readded_one_reuses_what_vllm_holds():
    table = AdapterTable()
    table.apply([spec("a"), spec("b")])
    load(table, "a")
    b = load(table, "b")
    table.apply([spec("a")])
    assert table.next_action(0.0) == Unload("b", b)
    table.apply([spec("a"), spec("b")])  # back before the unload ran
    assert table.unloads == {} and table.records["b"].served == b
    assert isinstance(table.next_action(0.0), Load)


def test_a_model_list_older_than_a_load_is_not_a_loss():
    table = AdapterTable()
    table.apply([spec("a")])
    seq_before = table.seq  # the monitor asks vLLM for its list here...
    load(table, "a")  # ...the load finishes before the answer is read
    assert table.observe({}, seq_before, DIR) == []
    assert table.records["a"].state == LOADED
    assert table.observe({}, table.seq, DIR) == ["a"]  # a fresh list without it is


def test_lost_adapter_is_reloaded_from_its_folder():
    table = AdapterTable()
    table.apply([spec("a")])
    version = load(table, "a")
    assert table.observe({}, table.seq, DIR) == ["a"]
    record = table.records["a"]
    assert record.state == PENDING and "restarted" in record.message
    action = table.next_action(0.0)
    assert action == Reload("a", version)
    table.start(action, "loading it again")
    assert record.state == LOADING
    table.reloaded("a", action.served, 0.2, 5.0)
    assert (record.state, record.served.path, record.restore) == (LOADED, version.path, None)
    assert table.observe({"a": version.path}, table.seq, DIR) == []


def test_failed_reload_retries_while_vllm_is_unreachable():
    table = AdapterTable()
    table.apply([spec("a")])
    load(table, "a")
    table.observe({}, table.seq, DIR)
    action = table.next_action(0.0)
    table.start(action, "loading it again")
    table.reload_failed("a", action.served, "vLLM did not answer", transient=True, now=10.0)
    record = table.records["a"]
    assert record.state == FAILED and record.restore == action.served
    assert table.next_action(11.0) is None
    assert table.next_action(10.0 + backoff(1)) == action


def test_our_adapters_nobody_configured_are_unloaded_others_left_alone():
    table = AdapterTable()
    table.apply([spec("a")])
    table.observe({"stale": f"{DIR}/stale-0123", "foreign": "/elsewhere/x"}, 0, DIR)
    action = table.next_action(0.0)
    assert isinstance(action, Unload) and action.name == "stale"
    table.unloaded("stale", action.served)
    assert isinstance(table.next_action(0.0), Load)


def test_readiness_waits_for_first_settle_only():
    table = AdapterTable()
    table.apply([spec("a"), spec("b")])
    assert table.readiness(vllm_up=False) == (False, "vLLM does not answer /health yet")
    ready, reason = table.readiness(vllm_up=True)
    assert not ready and reason.endswith("a, b")
    load(table, "a")
    action = table.next_action(0.0)
    table.failed("b", action.spec, "bad", transient=False, now=0.0)
    assert table.readiness(vllm_up=True) == (True, "ready")  # a Failed one does not hold it
    table.apply([spec("a"), spec("b"), spec("c")])  # a later hot-load does not flip it
    assert table.readiness(vllm_up=True) == (True, "ready")
    assert table.readiness(vllm_up=False)[0] is False


def test_no_adapters_is_ready_once_vllm_is():
    table = AdapterTable()
    table.apply([])
    assert table.readiness(vllm_up=True) == (True, "ready")


def test_while_vllm_is_down_adapters_are_fetched_and_staged_for_it():
    table = AdapterTable()
    table.apply([spec("a"), spec("b")])
    table.unloads["old"] = served("old")
    staged = {}
    for name in ("a", "b"):
        action = table.next_action(0.0, vllm_up=False)  # no unload: that needs vLLM
        assert action == Load(name, spec(name))
        table.start(action, "downloading")
        staged[name] = served(name)
        table.stage(name, action.spec, staged[name])
        record = table.records[name]
        assert record.state == LOADING and "waiting for vLLM" in record.message
    assert table.next_action(0.0, vllm_up=False) is None
    assert {staged["a"].path, staged["b"].path} <= table.served_paths()  # kept on disk
    assert table.next_action(0.0, vllm_up=True) == Unload("old", served("old"))
    table.unloaded("old", served("old"))
    action = table.next_action(0.0, vllm_up=True)
    assert action == Load("a", spec("a"), staged["a"])
    table.loaded("a", action.spec, action.staged, 2.0, 0.0)
    assert table.records["a"].state == LOADED and table.records["a"].staged is None
    assert table.next_action(0.0, vllm_up=True) == Load("b", spec("b"), staged["b"])


def test_readded_while_its_unload_is_in_flight_is_loaded_afresh():
    table = AdapterTable()
    table.apply([spec("a")])
    version = load(table, "a")
    table.apply([])
    unload = table.next_action(0.0)
    table.apply([spec("a")])  # back while vLLM is dropping it
    table.unloaded("a", unload.served)
    record = table.records["a"]
    assert record.served is None and table.unloads == {}
    assert table.observe({}, table.seq, DIR) == []  # nothing to restore: it is loading anew
    assert table.next_action(0.0) == Load("a", spec("a"))
    assert version.path not in table.served_paths()


def test_a_new_adapter_waits_while_vllm_holds_max_loaded_and_loads_when_one_goes():
    """Where the operator caps what vLLM holds (CPU pools keep the last LoRA slot empty),
    a third adapter waits, says why, does not hold readiness back, and loads once a slot
    frees; replacing a loaded adapter in place needs no free slot."""
    table = AdapterTable(max_loaded=2)
    table.apply([spec("a"), spec("b"), spec("c")])
    load(table, "a")
    load(table, "b")
    assert table.next_action(0.0) is None
    waiting = table.records["c"]
    assert waiting.state == PENDING
    assert "at most 2 adapters (maxAdaptersInMemory)" in waiting.message
    assert table.readiness(vllm_up=True) == (True, "ready")

    table.apply([spec("a", sha=SHA_B), spec("b"), spec("c")])  # a replaced in place
    assert load(table, "a", identity=SHA_B).identity == SHA_B
    assert table.next_action(0.0) is None

    table.apply([spec("a", sha=SHA_B), spec("c")])  # b removed: unloaded first, then c
    action = table.next_action(0.0)
    assert isinstance(action, Unload) and action.name == "b"
    assert table.next_action(0.0) == action  # still held until vLLM confirms the unload
    table.unloaded("b", action.served)
    load(table, "c")


def test_without_a_cap_every_adapter_loads():
    table = AdapterTable()
    table.apply([spec(name) for name in "abcde"])
    for name in "abcde":
        load(table, name)
    assert table.counts()[LOADED] == 5
