"""The shared services of a sweep, as named Ray actors the driver starts and trials look up.

- `BaseBuilder`: the base-model cache. Pretraining runs once per (model preset, tokenizer,
  corpus and its content, pretraining config, worker count) key; the finished base is recorded as an artefact,
  `<storage>/bases/base-<key>/artefact.json` (its checkpoint, run and validation loss), so later
  trials and later sweeps reuse it. The actor runs one
  request at a time: two trials that need the same missing base wait for one build.
- `EvaluationService`: the evaluation actor pool. A trial hands over its checkpoints after its
  training workers are gone, and gets its score rows back; every row is also written to the
  sweep's `eval_scores` table. Trials are served at once, all sharing the pool's actors.
- `TrialClaims` (`claims.py`): which trial parameters are being trained.
"""

from __future__ import annotations

from pathlib import Path

import ray

from classit.artefacts import artefact_dir, is_complete, mark_complete, read_marker
from classit.config import ClassitConfig

BUILDER_NAME = "classit-base-builder"


def base_made_by(cfg: ClassitConfig) -> dict:
    """What a base model is made of: the trial config's slices pretraining reads, and the corpus's
    content (a corpus changed in place is pretrained on again, not served the old base)."""
    from classit.data.corpus import corpus_fingerprint

    return {"model": cfg.model.model_dump(mode="json"), "tokenizer": cfg.tokenizer.model_dump(mode="json"),
            "corpus": cfg.corpus.model_dump(mode="json"), "pretrain": cfg.pretrain.model_dump(mode="json"),
            "num_workers": cfg.distributed.num_workers,
            "corpus_content": corpus_fingerprint(cfg.corpus, Path(cfg.run.cache_dir))}


def base_folder(cfg: ClassitConfig) -> Path:
    return artefact_dir(Path(cfg.run.storage_path) / "bases", "base", base_made_by(cfg))


def base_record(cfg: ClassitConfig) -> dict | None:
    """The finished base's record (`checkpoint`, `run`, `val_loss`), or None if it is not built."""
    folder = base_folder(cfg)
    return read_marker(folder) if is_complete(folder) else None


def cached_base(cfg: ClassitConfig) -> Path | None:
    record = base_record(cfg)
    if record is not None and (Path(record["checkpoint"]) / "config.json").is_file():
        return Path(record["checkpoint"])
    return None


@ray.remote(num_cpus=0, max_concurrency=1)
class BaseBuilder:
    def ensure(self, cfg_json: dict) -> str:
        """The base checkpoint for this config: from the cache, or pretrained now (once)."""
        from classit.train.runner import run_pretraining

        cfg = ClassitConfig.model_validate(cfg_json)
        found = cached_base(cfg)
        if found is not None:
            return str(found)
        folder = base_folder(cfg)
        result = run_pretraining(cfg.model_copy(update={"run": cfg.run.model_copy(update={"name": folder.name})}))
        if result.error:
            raise RuntimeError(f"pretraining the base model {folder.name} failed: {result.error}")
        folder.mkdir(parents=True, exist_ok=True)
        mark_complete(folder, base_made_by(cfg), checkpoint=result.checkpoint.path, run=folder.name,
                      val_loss=result.metrics.get("val_loss"))
        return result.checkpoint.path

    def build_ahead(self, cfg_json: dict) -> None:
        """`ensure`, asked by the driver as the sweep starts, so that pretraining overlaps Tune's
        start-up instead of waiting for the first trial to ask. A failure is not raised here: each
        trial's own `ensure` builds again and raises it."""
        try:
            self.ensure(cfg_json)
        except Exception:  # noqa: BLE001 - raised again by the trials that ask for this base
            pass


def ensure_base(cfg: ClassitConfig) -> Path:
    """From a trial: the base its config needs, built by the sweep's one builder if missing."""
    found = cached_base(cfg)
    if found is not None:
        return found
    builder = ray.get_actor(BUILDER_NAME)
    return Path(ray.get(builder.ensure.remote(cfg.model_dump(mode="json"))))


@ray.remote(num_cpus=0, max_concurrency=1000)  # a thread per trial waiting for its scores
class EvaluationService:
    def __init__(self, evaluation: dict, results_dir: str):
        from classit.config import EvaluationConfig
        from classit.evaluate.actors import EvaluationPool

        ecfg = EvaluationConfig.model_validate(evaluation)
        self.pool = EvaluationPool(num_actors=ecfg.actors, num_cpus=ecfg.cpus_per_actor, num_gpus=ecfg.gpus_per_actor,
                                   resources=ecfg.actor_resources)
        self.results_dir = results_dir

    def evaluate(self, jobs: list) -> list[dict]:
        return self.pool.run(jobs, results_dir=self.results_dir)


def evaluation_service_name(sweep_name: str) -> str:
    return f"classit-eval-{sweep_name}"


def start_services(cfg: ClassitConfig, results_dir: str, pending_bases: dict[str, ClassitConfig]) -> list:
    """The base builder (already pretraining the `pending_bases`), the evaluation service and the
    trial claims, pinned to this (the driver's) node: they hold no compute and must outlive any
    worker node the cluster loses."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from classit.sweep.claims import TrialClaims, claims_name

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    builder = BaseBuilder.options(name=BUILDER_NAME, scheduling_strategy=here).remote()
    for base_cfg in pending_bases.values():
        builder.build_ahead.remote(base_cfg.model_dump(mode="json"))
    service = EvaluationService.options(name=evaluation_service_name(cfg.sweep.name), scheduling_strategy=here).remote(
        cfg.evaluation.model_dump(mode="json"), results_dir)
    claims = TrialClaims.options(name=claims_name(cfg.sweep.name), scheduling_strategy=here).remote()
    return [builder, service, claims]
