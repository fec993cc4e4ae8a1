"""One attempt of a fine-tune on one worker: load, resume, train, checkpoint, publish.

The order of phases is the contract. Until the loop's first step, a stop ends the
attempt at once (`control.begin_training` / `abandon`: nothing was trained, so nothing
is lost). After it, a stop is honoured between optimizer steps: the state is
snapshotted, the upload in flight and this one are waited for (manifest last), and only
then does the attempt report "preempted" with that checkpoint. Periodic checkpoints
upload in the background (`checkpointing`); the adapter is published only after every
checkpoint upload has ended, so a failed one fails the run instead of going unnoticed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..manifest import Manifest
from ..objectstore import delete_prefix, make_client
from . import data as datamod
from . import evaluation as evalmod
from . import modeling, sources, state, storage
from .checkpointing import CheckpointWriter
from .steps import LOSS_WINDOW, RunState, evaluate, seed_everything, train_step

log = logging.getLogger("kubetune.train")
KEEP_CHECKPOINTS = 2
LOG_EVERY_SECONDS = 10.0


class TrainingSession:
    def __init__(self, config: dict, control, worker, workdir: Path) -> None:
        from kubetune.api import FineTuneJobSpec, parse_spec

        self.config = config
        self.control = control
        self.worker = worker
        self.workdir = workdir
        self.spec = parse_spec(FineTuneJobSpec, config["spec"])
        self.location = storage.JobLocation(
            self.spec.output.uri, config["namespace"], config["job"]
        )
        self.started = config.get("startedAt") or time.time()
        self.run_state = RunState()
        self.timings = {"trainSeconds": 0.0, "firstStepSeconds": None}
        self.writer: CheckpointWriter | None = None
        self._last_log = 0.0
        self._steps_this_attempt = 0

    def client(self):
        return make_client(self.spec.output.endpoint, self.spec.output.region)

    def report(self, **fields) -> None:
        if self.worker.is_chief:
            self.control.update(fields)

    # phases -------------------------------------------------------------------------

    def run(self) -> dict:
        self.report(phase="Loading")
        self.prepare()
        resumed = self.resume()
        self.writer = CheckpointWriter(
            self.client, self.location, self.workdir, KEEP_CHECKPOINTS, resumed,
            on_commit=lambda saved: self.report(lastCheckpoint=saved),
            synchronous=bool(self.config.get("syncCheckpoints")))
        planned = self.spec.evaluation
        if planned is None and resumed is None and self.eval_examples and not self.stop_now():
            self.run_state.initial_eval_loss = self.evaluate()
            self.report(evalLoss=self.run_state.initial_eval_loss)
        if planned is not None and planned.when.baseline and \
                "baseline" not in self.run_state.evaluation:
            self.run_evaluation("baseline")  # a stop cuts it short; begin_training sees it
        if not self.begin_training():
            return self.preempted(wrote_checkpoint=False)
        self.report(phase="Training")
        interval = self.spec.spot.checkpoint_interval_steps
        while self.run_state.step < self.total_steps:
            self.step_once()
            if self.worker.is_chief:
                self.writer.raise_if_failed()
            step = self.run_state.step
            if self.stop_now():
                return self.stop_with_checkpoint()
            every = planned.when.every_steps if planned is not None else None
            if every and step % every == 0 and step < self.total_steps and \
                    not self.run_evaluation("latest"):
                return self.stop_with_checkpoint()
            if step % interval == 0 and step < self.total_steps:
                if planned is None:
                    self.run_state.eval_loss = self.evaluate()
                    self.report(evalLoss=self.run_state.eval_loss)
                self.checkpoint()
        if planned is not None and planned.when.end and not self.run_evaluation("final"):
            return self.stop_with_checkpoint()  # resumed at the last step, it evaluates again
        return self.finish()

    def prepare(self) -> None:
        spec, training = self.spec, self.spec.training
        model_dir = sources.model_directory(
            spec.base_model.uri, spec.base_model.revision, self.client, self.workdir
        )
        self.tokenizer = modeling.load_tokenizer(model_dir, spec)
        text = sources.read_dataset(spec.dataset.uri, self.client)
        rows = datamod.parse_jsonl(text, spec.dataset.uri)
        train_idx, eval_idx = datamod.split_rows(
            len(rows), spec.dataset.eval_fraction, training.seed
        )

        def build(indices):
            picked = [rows[i] for i in indices]
            return datamod.build_examples(picked, spec.dataset.format, self.tokenizer,
                                          training.max_seq_length, training.packing,
                                          spec.dataset.uri) if picked else []

        self.train_examples = build(train_idx)
        self.eval_examples = build(eval_idx)
        self.evalset = self.build_eval_set(rows, eval_idx)
        if self.evalset is not None:
            self.eval_examples = self.evalset.loss_examples
        self.order = datamod.DataOrder(len(self.train_examples), training.batch_size,
                                       self.worker.world_size,
                                       training.gradient_accumulation_steps, training.seed)
        self.order.check(spec.dataset.uri)
        self.total_steps = self.order.total_steps(training.epochs, training.max_steps)
        seed_everything(training.seed)
        self.model = modeling.load_peft_model(model_dir, spec, self.worker.device)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = modeling.make_optimizer(self.model, training, self.worker.device)
        self.scheduler = modeling.make_scheduler(self.optimizer, training, self.total_steps)
        self.report(totalSteps=self.total_steps, step=0, epoch=0.0)

    def resume(self) -> dict | None:
        """Continue from the newest verified checkpoint, if any: its {"step", "uri"}."""
        found = storage.latest_checkpoint(self.client(), self.location, self.workdir / "resume")
        if found is None:
            return None
        step, prefix = found
        body = state.load_training_state(self.workdir / "resume", self.model, self.optimizer,
                                         self.scheduler)
        self.run_state = RunState.from_json(body)
        if self.run_state.step != step:
            raise ValueError(
                f"checkpoint {prefix}: trainer_state step {self.run_state.step} != {step}"
            )
        resumed = {"step": step, "uri": str(prefix)}
        self.report(step=step, lastCheckpoint=resumed, evalLoss=self.run_state.eval_loss)
        log.info("resumed from %s (step %d of %d)", prefix, step, self.total_steps)
        return resumed

    def stop_now(self) -> bool:
        return self.worker.agree(self.worker.is_chief and self.control.stop_requested())

    def begin_training(self) -> bool:
        """Rank 0 takes the start-of-training latch; every rank follows its answer."""
        return self.worker.agree(not self.worker.is_chief or self.control.begin_training())

    def step_once(self) -> None:
        began = time.time()
        batches = self.order.micro_batches(self.run_state.step, self.worker.rank)
        loss, tokens = train_step(self.model, self.optimizer, self.scheduler, self.train_examples,
                                  batches, self.params, self.worker, self.spec.training,
                                  self.tokenizer.pad_token_id)
        elapsed = time.time() - began
        rs = self.run_state
        rs.step += 1
        rs.tokens += tokens
        rs.recent_losses = (rs.recent_losses + [loss])[-LOSS_WINDOW:]
        self.timings["trainSeconds"] += elapsed
        if self.timings["firstStepSeconds"] is None:
            self.timings["firstStepSeconds"] = time.time() - self.started
        self._steps_this_attempt += 1
        per_step = self.timings["trainSeconds"] / self._steps_this_attempt
        self.report(step=rs.step, loss=loss, epoch=rs.step / self.order.steps_per_epoch,
                    tokensPerSecond=tokens / elapsed if elapsed > 0 else None,
                    etaSeconds=int(per_step * (self.total_steps - rs.step)))
        if self.worker.is_chief and time.time() - self._last_log >= LOG_EVERY_SECONDS:
            self._last_log = time.time()
            log.info("step %d/%d loss %.4f tokens/s %.0f", rs.step, self.total_steps, loss,
                     tokens / elapsed if elapsed > 0 else 0.0)

    def evaluate(self) -> float | None:
        return evaluate(self.model, self.eval_examples, self.tokenizer.pad_token_id,
                        self.spec.training.batch_size, self.worker.device)

    def build_eval_set(self, rows, eval_idx) -> evalmod.EvalSet | None:
        """spec.evaluation's rows: its own dataset, else the held-out split (unpacked)."""
        planned, spec = self.spec.evaluation, self.spec
        if planned is None:
            return None
        if planned.dataset is not None:
            source = planned.dataset.uri
            picked = datamod.parse_jsonl(sources.read_dataset(source, self.client), source)
        else:
            source, picked = spec.dataset.uri, [rows[i] for i in eval_idx]
        return evalmod.build_eval_set(picked, spec.evaluation_format(), self.tokenizer,
                                      spec.training.max_seq_length, list(planned.metrics),
                                      planned.max_examples, source)

    def run_evaluation(self, key: str) -> bool:
        """Measure spec.evaluation's metrics now and record them as `key` (baseline,
        latest or final); False if a stop request cut the evaluation short."""
        planned, rs = self.spec.evaluation, self.run_state
        self.report(phase="Evaluating")
        scores = evalmod.score(self.model, self.tokenizer, self.evalset, list(planned.metrics),
                               self.worker, self.spec.training.batch_size,
                               planned.max_new_tokens, rs.step, self.evaluate, self.stop_now)
        if scores is None:
            return False
        rs.evaluation = {**rs.evaluation, key: scores}
        if scores.get("loss") is not None:
            rs.eval_loss = scores["loss"]
            if key == "baseline":
                rs.initial_eval_loss = scores["loss"]
        self.report(evaluation=rs.evaluation, evalLoss=rs.eval_loss,
                    phase="Training" if key == "latest" else "Evaluating")
        if self.worker.is_chief:
            log.info("evaluation (%s) at step %d: %s", key, rs.step,
                     ", ".join(f"{k} {v:.4g}" for k, v in scores.items()
                               if isinstance(v, float)))
        return True

    def checkpoint(self) -> None:
        """Rank 0 snapshots the state and starts its upload; the others wait for the
        snapshot only, so none runs ahead of the state being saved."""
        if self.worker.is_chief:
            self.snapshot()
        self.worker.barrier()

    def snapshot(self) -> None:
        step = self.run_state.step
        manifest = Manifest(kind="checkpoint", step=step, base_model=self.base_model_ref(),
                            method=self.method_ref(), training=self.training_ref(),
                            metrics=self.metrics())
        trainer_state = self.run_state.to_json(self.order)
        self.writer.save(step, lambda local: state.save_training_state(
            local, self.model, self.optimizer, self.scheduler, trainer_state), manifest)

    def stop_with_checkpoint(self) -> dict:
        """The stop path: snapshot this step unless it is the one just saved, then wait
        until it (and the upload before it) is in storage."""
        self.report(phase="Checkpointing")
        if self.worker.is_chief:
            if self.writer.snapshot_step != self.run_state.step:
                self.snapshot()
            self.writer.wait()
            self.writer.raise_if_failed()
        self.worker.barrier()
        return self.preempted(wrote_checkpoint=True)

    def finish(self) -> dict:
        """Final eval, then the adapter + tokenizer published with manifest.json last."""
        if self.spec.evaluation is None:
            self.run_state.eval_loss = self.evaluate()
        if self.worker.is_chief:
            self.writer.wait()
            self.writer.raise_if_failed()
        outcome = {"status": "completed", "steps": self.run_state.step,
                   "totalSteps": self.total_steps, **self.metrics(), **self.all_timings()}
        if self.worker.is_chief:
            self.report(phase="Publishing", evalLoss=self.run_state.eval_loss)
            local = self.workdir / "adapter"
            self.model.peft_config["default"].base_model_name_or_path = self.spec.base_model.uri
            self.model.save_pretrained(str(local), safe_serialization=True)
            self.tokenizer.save_pretrained(str(local))
            manifest = Manifest(kind="adapter", step=self.run_state.step,
                                base_model=self.base_model_ref(), method=self.method_ref(),
                                training=self.training_ref(), metrics=self.metrics(),
                                job={"namespace": self.config["namespace"],
                                     "name": self.config["job"], "uid": self.config.get("uid"),
                                     "specSha256": self.config.get("specSha256")})
            published = storage.publish_directory(self.client(), local, self.location.adapter,
                                                  manifest)
            if self.spec.retention.checkpoints == "DeleteOnSuccess":
                delete_prefix(self.client(), self.location.checkpoints)
            outcome["adapter"] = {"uri": published.uri, "sha256": published.manifest_sha256,
                                  "sizeBytes": published.size_bytes}
            self.report(phase="Succeeded")
        self.worker.barrier()
        return outcome

    def preempted(self, wrote_checkpoint: bool) -> dict:
        self.report(phase="Preempted")
        saved = self.writer.committed if self.writer else None
        return {"status": "preempted", "steps": self.run_state.step,
                "totalSteps": getattr(self, "total_steps", None),
                "checkpoint": saved, "wroteCheckpoint": wrote_checkpoint,
                **self.all_timings()}

    def all_timings(self) -> dict:
        """Time the loop was blocked by checkpoints apart from their background uploads."""
        writer = self.writer
        return {**self.timings,
                "checkpointSeconds": writer.blocked_seconds if writer else 0.0,
                "checkpointUploadSeconds": writer.upload_seconds if writer else 0.0}

    # manifest contents ---------------------------------------------------------------

    def base_model_ref(self) -> dict:
        return {"uri": self.spec.base_model.uri, "revision": self.spec.base_model.revision}

    def method_ref(self) -> dict:
        method = self.spec.method
        quant = method.effective_quantization()
        return {"type": method.type, "rank": method.lora.rank, "alpha": method.lora.alpha,
                "dropout": method.lora.dropout, "targetModules": list(method.lora.target_modules),
                "quantization": quant.model_dump(by_alias=True) if quant else None}

    def training_ref(self) -> dict:
        return self.spec.training.model_dump(by_alias=True, exclude_none=True)

    def metrics(self) -> dict:
        rs = self.run_state
        body = {"trainLoss": rs.train_loss, "evalLoss": rs.eval_loss,
                "initialEvalLoss": rs.initial_eval_loss, "steps": rs.step, "tokens": rs.tokens}
        if self.spec.evaluation is not None:
            body["evaluation"] = self.evaluation_record()
        return body

    def evaluation_record(self) -> dict:
        """The results, and the gate's verdict once there is a final evaluation: what the
        adapter's manifest records (the operator judges again from its own spec)."""
        from kubetune.api.evaluation import judge, scores_of

        record = dict(self.run_state.evaluation)
        gate = self.spec.evaluation.gate
        if gate is not None and "final" in record:
            record["gate"] = judge(gate, scores_of(record.get("baseline")),
                                   scores_of(record.get("final"))).to_wire()
        return record
