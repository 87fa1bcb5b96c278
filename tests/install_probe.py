"""Run as a script with stdin full of "y": try every way diffusers and transformers import repository code.

Argument: a JSON file naming the fixture folders. Prints one JSON line: for each attempt, the exception type
and message it ended in (or "loaded"). The test checks that the repository code's marker file never appears.
Run in its own process so that transformers' stdin prompt, the SIGALRM it sets and the modules it caches
cannot leak into the test process.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any


def _attempt(results: dict[str, Any], name: str, action: Callable[[], object]) -> None:
    try:
        action()
    except Exception as exc:  # the probe reports every outcome; the test decides
        results[name] = {"type": type(exc).__name__, "message": str(exc)}
    else:
        results[name] = {"type": "loaded", "message": ""}


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as handle:
        paths = json.load(handle)
    import diffusers
    import transformers
    from diffusers.modular_pipelines import ComponentSpec, ModularPipelineBlocks

    import safeloader

    report = safeloader.install(policy="default")
    results: dict[str, Any] = {"report": {"type": "report", "message": report.format_text()}}
    model, pipeline = paths["model"], paths["pipeline"]

    # 1. diffusers' AutoModel on a ["transformers", "AutoModel"] subfolder: transformers would prompt.
    _attempt(
        results, "diffusers_automodel", lambda: diffusers.AutoModel.from_pretrained(pipeline, subfolder="text_encoder")
    )
    # transformers itself, prompted (stdin says "y") and with trust_remote_code=True.
    _attempt(results, "transformers_prompted", lambda: transformers.AutoModel.from_pretrained(model))
    _attempt(
        results, "transformers_trusted", lambda: transformers.AutoModel.from_pretrained(model, trust_remote_code=True)
    )
    _attempt(results, "config_trusted", lambda: transformers.AutoConfig.from_pretrained(model, trust_remote_code=True))
    _attempt(
        results, "tokenizer_trusted", lambda: transformers.AutoTokenizer.from_pretrained(model, trust_remote_code=True)
    )
    _attempt(
        results,
        "transformers_pipeline",
        lambda: transformers.pipeline("feature-extraction", model=model, trust_remote_code=True),
    )

    # 2. Modular diffusers: load_components(trust_remote_code=True) with a transformers AutoModel type hint.
    class TextEncoderBlock(ModularPipelineBlocks):
        @property
        def expected_components(self) -> list[ComponentSpec]:
            return [
                ComponentSpec("text_encoder", transformers.AutoModel, pretrained_model_name_or_path=model, subfolder="")
            ]

    def load_components() -> None:
        modular = TextEncoderBlock().init_pipeline()
        modular.load_components(trust_remote_code=True)

    _attempt(results, "modular_load_components", load_components)

    # 3. from_single_file(..., config=folder) whose model_index.json names a module next to it.
    _attempt(
        results,
        "single_file_config",
        lambda: diffusers.StableDiffusionPipeline.from_single_file(paths["checkpoint"], config=paths["config_folder"]),
    )
    safeloader.uninstall()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
