"""Loading the teacher's frozen decoder backbone and its tokenizer.

A backbone spec is one of:

- ``"tiny"``: a small random Llama built in code (deterministic from ``seed``) with a word-level
  tokenizer over a fixed English vocabulary, for tests and the quickstart;
- a path to a ``.gguf`` file, which transformers dequantizes (needs the ``gguf`` package);
- a local directory holding a Hugging Face config, weights and tokenizer;
- anything else is taken as a hub id, which only loads where the hub is reachable (or cached).

The backbone is the base model without the LM head (``AutoModel``, e.g. ``LlamaModel``), frozen and in
eval mode: teachers train adapters, projectors and heads around it, never its own weights.

Prompts are left-padded (see :mod:`teacher.prompts`) and carry explicit ``position_ids`` that count
real tokens only, so the real tokens of every row sit at positions ``0..len-1`` exactly as unpadded, and
the attention mask hides the padding before them. The tokenizer's own ``padding_side`` is never used to
build prompts.
"""

from __future__ import annotations

import importlib.util
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import torch
import transformers
from packaging.version import Version
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    LlamaConfig,
    LlamaModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from distill.errors import DistillError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# Exceptions from_pretrained raises for a spec it cannot load (missing files, unreachable hub, bad
# config, unsupported GGUF architecture, mismatched shapes). Anything else is a bug and propagates.
_LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError, ImportError, TypeError)

# `org/name` or `name`: the only shapes a hub id can take. Anything else that does not exist locally is
# a mistyped path, reported without a pointless round trip to the hub.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

_SPECIAL = ["<unk>", "<pad>", "<s>", "</s>"]

try:  # recent transformers: attention functions and their masks are registries one can add to
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
except ImportError:  # older: every backbone keeps transformers' own SDPA attention
    AttentionInterface = None

# The attention implementation of every backbone with transformers' SDPA attention (where registries exist).
ATTENTION = "distill_sdpa"


def _sdpa_float32_on_cpu(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention, run in float32 when a bfloat16 backbone is on a CPU.

    CPU SDPA's bfloat16 kernels are slower than its float32 ones at a teacher's shapes: forward and
    backward of 8 prompts x 9 heads x 147 tokens took 1.7x as long in bfloat16 as the same attention
    computed in float32 between two casts (`bench/results/backbone_rate.md`). Elsewhere (float32, or a
    GPU) it is transformers' own function, unchanged.
    """
    if query.dtype != torch.bfloat16 or query.device.type != "cpu":
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    out, weights = sdpa_attention_forward(
        module, query.float(), key.float(), value.float(), attention_mask, **kwargs
    )
    return out.to(query.dtype), weights


if AttentionInterface is not None:
    AttentionInterface.register(ATTENTION, _sdpa_float32_on_cpu)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the masks SDPA gets: causal and padding

# The tiny tokenizer's vocabulary: what prompts are made of (instructions, connectives, digits and
# punctuation of titles such as "Toy Story (1995)"), plus common words that appear in item titles.
# Lowercased; unknown words become <unk>, which is harmless for a random test model.
_WORDS = """
. , ; : ! ? ' " ( ) [ ] { } - _ / & + * # @ % $ = < > | ~ ^ `
0 1 2 3 4 5 6 7 8 9
a an the this that these those it its he she they them their his her you your we our i me my
is are was were be been being has have had do does did will would can could should may might must
and or but not no nor so if then than as of in on at by for with from to into onto over under
about after before between through during without within up down out off again more most less
user users item items history sequence next previous last first second third following
watched watch watching viewed view bought buy purchased purchase read reading played play listened
listen rated rate liked like clicked click visited visit interacted interact interaction
interactions reviewed review ordered order chose choose selected select
predict prediction recommend recommendation recommended given based candidate candidates answer
question response instruction input output title titles movie movies film films book books song
songs music album game games product products restaurant restaurants business businesses place
places what which who whom whose when where why how all any each every some many much few one two
three four five six seven eight nine ten new old good best great little big small long short high
low own same other another such only also just very too well still even ever never always often
here there now time year years day days world life man men woman women people love story stories
part volume edition collection series season episode vol complete special deluxe official original
version remastered edition live greatest hits best of
night day home house city country war star stars king queen lord lady girl boy girls boys child
children family friend friends man dark light black white red blue green gold silver blood fire
water ice heart mind dream dreams game last lost secret return back death dead life live alive
american english french german italian spanish japanese chinese new york london paris
mr mrs dr st ii iii iv v vi vii viii ix x
""".split()


def _tiny_vocab() -> list[str]:
    """Special tokens first (ids 0-3), then each word once, in a fixed order."""
    vocab: list[str] = list(_SPECIAL)
    for word in _WORDS:
        if word not in vocab:
            vocab.append(word)
    return vocab


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A lowercasing word-level tokenizer: words, single digits and single punctuation marks."""
    vocab = {token: i for i, token in enumerate(_tiny_vocab())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    # Whitespace alone keeps runs such as ")," or "1995" together; isolating punctuation and digits maps
    # them onto the small vocabulary instead of <unk>.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Whitespace(),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    # Llama tokenizers prepend BOS; doing the same keeps prompt code identical across backbones.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        padding_side="right",
        model_max_length=2048,
    )


def _tiny_model(vocab_size: int, pad_token_id: int, seed: int) -> LlamaModel:
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=2048,
        pad_token_id=pad_token_id,
        bos_token_id=2,
        eos_token_id=3,
    )
    # A forked RNG makes the weights a function of `seed` alone without reseeding the caller's stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaModel(config)


def _dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    # transformers renamed `torch_dtype` to `dtype` in 4.56 and warns on the old name since.
    name = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {name: dtype}


def _gguf_kwargs(name: str) -> dict:
    kwargs: dict = {"gguf_file": name}
    # Since transformers 5, GGUF weights stay packed in their quantized blocks whenever the `kernels`
    # package offers a matmul for them; those layers are not `nn.Linear` and cannot be trained through or
    # wrapped by adapters. Dequantizing always gives a plain dense model, whatever is installed.
    gguf_config = getattr(transformers, "GgufConfig", None)
    if gguf_config is not None:
        kwargs["quantization_config"] = gguf_config(gguf_file=name, dequantize=True)
    return kwargs


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip().rstrip(":")


def _from_pretrained(
    where: str, dtype: torch.dtype, **kwargs: object
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    # The config is the cheapest file: an unreachable hub or a wrong id fails here, once, rather than
    # after a second round of retries for the tokenizer.
    config = AutoConfig.from_pretrained(where, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
    model = AutoModel.from_pretrained(where, config=config, **kwargs, **_dtype_kwargs(dtype))
    return model, tokenizer


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids the hub (read now: huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or value.upper() in ("1", "ON", "YES", "TRUE")


def _hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """One request to the hub's front page (through any proxy the environment names): any HTTP answer
    means reachable; no answer within ``timeout`` seconds means not."""
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return True


def _hub_kwargs(spec: str) -> dict:
    """How to load hub id ``spec``: from the cache alone when offline (``HF_HUB_OFFLINE=1``, or the hub
    does not answer); a one-line error at once, not a minute of retries, when it is not cached there."""
    from huggingface_hub import constants, try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(spec, "config.json"), str)
    if hub_offline():
        if not cached:
            raise DistillError(
                f"cannot load backbone {spec!r}: HF_HUB_OFFLINE is set and it is not in the Hugging Face "
                f"cache ({constants.HF_HUB_CACHE}); download it where the network allows, or give a local "
                "directory or .gguf file"
            )
        return {"local_files_only": True}
    if _hub_reachable(constants.ENDPOINT):
        return {}
    if cached:
        return {"local_files_only": True}
    raise DistillError(
        f"cannot load backbone {spec!r}: no such local path, the hub ({constants.ENDPOINT}) does not answer "
        "and it is not in the Hugging Face cache; give a local directory or .gguf file (HF_HUB_OFFLINE=1 "
        "skips the hub)"
    )


def _decoder_layers(model: PreTrainedModel) -> tuple[torch.nn.Module, str]:
    """The ModuleList of decoder blocks and its attribute name (`layers` for Llama-likes, `h` for GPT-2)."""
    for name in ("layers", "h"):
        layers = getattr(model, name, None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers, name
    raise AttributeError(f"{type(model).__name__} has no `layers` or `h` ModuleList")


def _truncate(model: PreTrainedModel, layers: int, spec: str) -> None:
    try:
        blocks, name = _decoder_layers(model)
    except AttributeError as exc:
        raise DistillError(f"cannot truncate backbone {spec!r}: {exc}") from exc
    if not 1 <= layers <= len(blocks):
        raise DistillError(
            f"cannot truncate backbone {spec!r} to {layers} layers: it has {len(blocks)} "
            f"(layers must be between 1 and {len(blocks)})"
        )
    setattr(model, name, blocks[:layers])
    model.config.num_hidden_layers = layers
    # Newer configs carry per-layer lists (attention type per layer); keep them the same length.
    layer_types = getattr(model.config, "layer_types", None)
    if isinstance(layer_types, list):
        model.config.layer_types = layer_types[:layers]


def _freeze(model: PreTrainedModel) -> None:
    model.eval()
    model.requires_grad_(False)


def locate_backbone(spec: str) -> tuple[str, dict, str]:
    """Where and how ``from_pretrained`` finds backbone ``spec`` (any but ``"tiny"``), checked without
    loading it: ``(path or hub id, keyword arguments, how a load error is introduced)``. A missing
    file, a directory without ``config.json``, a path that is no hub id, or a hub id neither reachable
    nor cached is a one-line DistillError: a caller checks this before writing anything."""
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise DistillError(f"cannot load backbone {spec!r}: no such .gguf file")
        if importlib.util.find_spec("gguf") is None:
            raise DistillError(
                f"cannot load backbone {spec!r}: reading .gguf files needs the 'gguf' package "
                "(pip install gguf)"
            )
        return str(path.parent), _gguf_kwargs(path.name), ""
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise DistillError(f"cannot load backbone {spec!r}: directory has no config.json")
        return str(path), {}, ""
    if path.exists() or not _HUB_ID.match(spec):
        raise DistillError(
            f"cannot load backbone {spec!r}: no such local path (expected 'tiny', a "
            ".gguf file, a model directory or a hub id)"
        )
    return spec, _hub_kwargs(spec), "no such local path, and on the hub: "


def load_backbone(
    spec: str, *, layers: int | None = None, dtype: str = "float32", seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a frozen decoder backbone (no LM head) and its tokenizer.

    Args:
        spec: ``"tiny"``, a ``.gguf`` file, a local model directory, or a hub id (see the module
            docstring).
        layers: Keep only the first ``layers`` decoder blocks (``None`` keeps all); must lie in
            ``[1, available]``.
        dtype: ``"float32"`` or ``"bfloat16"``: the dtype of every backbone weight.
        seed: Seed of the random weights of ``"tiny"``; ignored for pretrained backbones.

    Returns:
        ``(model, tokenizer)``: the model in eval mode with ``requires_grad=False`` on every parameter;
        the tokenizer with a pad token and right padding.

    Raises:
        DistillError: (one line, naming the spec) for an unknown dtype, a missing path, a model that
            cannot be loaded, a missing ``gguf`` package, or an out-of-range ``layers``.
    """
    if dtype not in DTYPES:
        raise DistillError(
            f"cannot load backbone {spec!r}: unknown dtype {dtype!r} (expected one of {', '.join(DTYPES)})"
        )
    torch_dtype = DTYPES[dtype]

    if spec == "tiny":
        tokenizer = _tiny_tokenizer()
        model = _tiny_model(len(tokenizer), tokenizer.pad_token_id, seed)
    else:
        where, kwargs, why = locate_backbone(spec)
        try:
            model, tokenizer = _from_pretrained(where, torch_dtype, **kwargs)
        except _LOAD_ERRORS as exc:
            raise DistillError(f"cannot load backbone {spec!r}: {why}{_first_line(exc)}") from exc

    if layers is not None:
        _truncate(model, layers, spec)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    if tokenizer.pad_token is None:
        raise DistillError(f"cannot load backbone {spec!r}: its tokenizer has no pad, eos or unk token")
    tokenizer.padding_side = "right"
    model = model.to(torch_dtype)
    if AttentionInterface is not None and model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(ATTENTION)
    _freeze(model)
    return model, tokenizer


def add_special_tokens(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tokens: list[str]
) -> list[int]:
    """Make each of ``tokens`` (e.g. ``"[HistoryEmb]"``) a single special token and return its id.

    Tokens already known keep their ids. When the vocabulary outgrows the input embedding table, the
    table is resized and the new rows are set to the mean of the existing rows: teachers overwrite
    these positions with projected item embeddings at run time, so the rows only need to be harmless
    when a prompt is run without replacement. The backbone stays frozen.

    Args:
        model: A backbone from :func:`load_backbone` (modified in place when it is resized).
        tokenizer: Its tokenizer (modified in place).
        tokens: Token strings; matched verbatim, never split or lowercased.

    Returns:
        The id of each token, in the order given.
    """
    vocab = tokenizer.get_vocab()
    new = [AddedToken(t, special=True, normalized=False) for t in tokens if t not in vocab]
    if new:
        tokenizer.add_tokens(new, special_tokens=True)
    embeddings = model.get_input_embeddings()
    old_rows = embeddings.num_embeddings
    if len(tokenizer) > old_rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        weight = model.get_input_embeddings().weight
        with torch.no_grad():
            weight[old_rows:] = weight[:old_rows].mean(dim=0, keepdim=True)
        _freeze(model)
    return tokenizer.convert_tokens_to_ids(list(tokens))


def hidden_size(model: PreTrainedModel) -> int:
    """Width of the backbone's token embeddings and hidden states."""
    return model.get_input_embeddings().embedding_dim
