"""The rule registry and each registered Kohya config rule, one example per rule, plus the kinds of run that
train nothing, diverge or barely move, and the argument strings sd-scripts evaluates."""

from __future__ import annotations

import pytest

from lora_pipeline.kohya_config import PipelineInputs, build_effective_config
from lora_pipeline.kohya_rules import COMBINATIONS, KEYS, NORMALISE, PIPELINE_INPUTS, VALUES
from lora_pipeline.problems import Problem, Severity, catalogue
from lora_pipeline.rules import RuleSet

RULE_SETS = (NORMALISE, KEYS, VALUES, PIPELINE_INPUTS, COMBINATIONS)

# One config per rule that makes exactly that rule speak, with the problem code it reports.
RULE_EXAMPLES: dict[str, tuple[str, str]] = {
    "KN101": ("sdxl = true", "CONFIG_GUI_KEY_NORMALISED"),
    "KN102": ('xformers = "xformers"', "CONFIG_GUI_KEY_NORMALISED"),
    "KN103": ("conv_dim = 8", "CONFIG_GUI_KEY_NORMALISED"),
    "KN104": ("vae_batch_size = 0", "CONFIG_GUI_KEY_NORMALISED"),
    "KN105": ("clip_skip = 2", "CONFIG_NO_EFFECT"),
    "KN106": ('caption_extention = ".txt"', "CONFIG_GUI_KEY_NORMALISED"),
    "KK101": ("epoch = 10", "CONFIG_UNKNOWN_KEY"),
    "KK102": ('output_dir = "/x"', "CONFIG_PIPELINE_OWNED"),
    "KK103": ('wandb_api_key = "k"', "CONFIG_SECRET"),
    "KK104": ('log_with = "wandb"', "CONFIG_OUTSIDE_SERVICE"),
    "KV101": ("train_batch_size = 0", "CONFIG_BAD_VALUE"),
    "KV102": ("lr_warmup_steps = 1.5", "CONFIG_BAD_VALUE"),
    "KV103": ('resolution = "big"', "CONFIG_BAD_VALUE"),
    "KV104": ('face_crop_aug_range = "4.0,2.0"', "CONFIG_BAD_VALUE"),
    "KV105": ('metadata_thumbnail = "/etc/passwd"', "CONFIG_UNSUPPORTED"),
    "KV106": ('caption_extension = "txt"', "CONFIG_GUI_KEY_NORMALISED"),
    "KV107": ('save_model_as = "ckpt"', "CONFIG_BAD_VALUE"),
    "KV108": ('optimizer_args = ["a=1=2"]', "CONFIG_BAD_VALUE"),
    "KV109": ('network_module = "os"', "CONFIG_NOT_ALLOWED"),
    "KV110": ('optimizer_type = "builtins.exec"', "CONFIG_NOT_ALLOWED"),
    "KV111": ('lr_scheduler = "cosine_annealing"', "CONFIG_BAD_CHOICE"),
    "KV112": ("use_lion_optimizer = true", "CONFIG_GUI_KEY_NORMALISED"),
    "KP101": ('output_name = "custom_lora_model"', "CONFIG_OUTPUT_NAME"),
    "KP102": ('pretrained_model_name_or_path = "someone/model"', "CONFIG_PIPELINE_OWNED"),
    "KP103": ("sample_every_n_epochs = 2", "CONFIG_PIPELINE_OWNED"),
    "KC101": ("network_train_unet_only = true\nunet_lr = 0.0", "CONFIG_NOTHING_TRAINS"),
    "KC102": ("text_encoder_lr = 0.0", "CONFIG_NO_EFFECT"),
    "KC103": ('optimizer_type = "AdamW"\nlearning_rate = 0.1', "CONFIG_RATE_SUSPECT"),
    "KC104": ('mixed_precision = "fp16"\nno_half_vae = false', "CONFIG_DIVERGES"),
    "KC105": ("cache_text_encoder_outputs = true", "CONFIG_CONFLICT"),
    "KC106": ("cache_latents = true\ncolor_aug = true", "CONFIG_CONFLICT"),
    "KC107": ("full_fp16 = true", "CONFIG_CONFLICT"),
    "KC108": ('lr_scheduler = "constant"\nlr_warmup_steps = 10', "CONFIG_CONFLICT"),
    "KC109": ('network_args = ["conv_dim=abc"]', "CONFIG_BAD_VALUE"),
    "KC110": ("bucket_reso_steps = 48", "CONFIG_CONFLICT"),
    "KC111": ("adaptive_noise_scale = 0.01", "CONFIG_CONFLICT"),
    "KC112": ("persistent_data_loader_workers = true\nmax_data_loader_n_workers = 0", "CONFIG_CONFLICT"),
    "KC113": ("min_timestep = 500\nmax_timestep = 100", "CONFIG_CONFLICT"),
    "KC114": ("max_train_epochs = 5\nmax_train_steps = 1600", "CONFIG_NO_EFFECT"),
    "KC115": ("fused_backward_pass = true", "CONFIG_NO_EFFECT"),
    "KC116": ("no_metadata = true", "CONFIG_NO_EFFECT"),
    "KC118": ("text_encoder_lr = [5e-5, 1e-5]", "CONFIG_NO_EFFECT"),
    "KC117": (
        'mixed_precision = "fp16"\nfull_fp16 = true\noptimizer_type = "AdamW"',
        "CONFIG_PRECISION_RISK",
    ),
}


def build(text: str) -> list[Problem]:
    inputs = PipelineInputs("pets", None, "stabilityai/stable-diffusion-xl-base-1.0", None)
    return build_effective_config(text + "\n", inputs).problems


def codes(text: str) -> list[str]:
    return [p.code for p in build(text)]


def silenced(rule_set: RuleSet, rule_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rule = rule_set[rule_id]
    monkeypatch.setitem(
        rule_set._rules, rule_id, type(rule)(rule.id, rule.name, rule.mirrors, lambda ctx: None)
    )


# --- the registry ---------------------------------------------------------------------------------------------


def test_every_rule_cites_the_sd_scripts_place_it_mirrors_and_says_what_it_checks() -> None:
    for rule_set in RULE_SETS:
        for rule in rule_set:
            assert rule.id.startswith(rule_set.prefix)
            assert rule.mirrors and rule.summary, rule.id
            assert any(marker in rule.mirrors for marker in (".py", "torch", ".tsv", "container")), rule.id


def test_every_rule_has_an_example_here() -> None:
    registered = {rule.id for rule_set in RULE_SETS for rule in rule_set}
    assert registered == set(RULE_EXAMPLES)


@pytest.mark.parametrize("rule_id", sorted(RULE_EXAMPLES))
def test_each_rule_reports_its_example_and_is_the_one_that_does(
    rule_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    text, code = RULE_EXAMPLES[rule_id]
    assert code in codes(text)
    rule_set = next(rule_set for rule_set in RULE_SETS if rule_id.startswith(rule_set.prefix))
    before = codes(text).count(code)
    silenced(rule_set, rule_id, monkeypatch)
    assert codes(text).count(code) < before


def test_rule_ids_are_unique_and_well_formed() -> None:
    rule_set: RuleSet[object] = RuleSet("ZZ", "test")
    with pytest.raises(ValueError, match="three digits"):
        rule_set.rule("ZZ1", "x", "y.py")
    with pytest.raises(ValueError, match="kebab-case"):
        rule_set.rule("ZZ001", "Not Kebab", "y.py")
    with pytest.raises(ValueError, match="twice"):
        RuleSet("KC", "again").rule("KC101", "again", "y.py")


def test_every_code_the_rules_use_is_in_the_catalogue() -> None:
    known = catalogue()
    for text, code in RULE_EXAMPLES.values():
        assert code in known
        assert {p.code for p in build(text)} <= known.keys()


# --- kind: runs that train nothing, diverge or barely move ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "named"),
    [
        # networks/lora.py prepare_optimizer_params: the only group (U-Net) has lr 0 and is dropped.
        ("network_train_unet_only = true\nunet_lr = 0.0\nlearning_rate = 2e-4", "unet_lr"),
        # train_network.py: a text_encoder_lr list counts by its first entry.
        ("network_train_text_encoder_only = true\ntext_encoder_lr = [0.0, 1e-4]", "text_encoder_lr"),
        ("unet_lr = 0.0\ntext_encoder_lr = 0.0", "unet_lr"),
        # networks/lora_fa.py keeps the lr-0 group: it runs and learns nothing.
        ('network_module = "networks.lora_fa"\nnetwork_train_unet_only = true\nunet_lr = 0.0', "unet_lr"),
        # LoRA+: lora_up trains at rate x ratio; lora_up starts at 0, so a ratio of 0 learns nothing.
        ('network_args = ["loraplus_lr_ratio=0"]', "LoRA+"),
    ],
)
def test_a_config_where_nothing_trains_is_refused_naming_the_setting(text: str, named: str) -> None:
    [problem] = [p for p in build(text) if p.code == "CONFIG_NOTHING_TRAINS"]
    assert problem.severity is Severity.ERROR
    assert named in problem.message


@pytest.mark.parametrize(
    "text",
    [
        # an empty text_encoder_lr list means "not set": learning_rate applies (train_network.py)
        "network_train_text_encoder_only = true\ntext_encoder_lr = []",
        # a U-Net rate of 0 with a text encoder rate: the text encoders still train
        "network_train_text_encoder_only = true\nunet_lr = 0.0",
        # loraplus_unet_lr_ratio = 0 falls through to loraplus_lr_ratio (`or` in prepare_optimizer_params)
        'network_train_unet_only = true\nnetwork_args = ["loraplus_unet_lr_ratio=0", "loraplus_lr_ratio=4"]',
    ],
)
def test_configs_that_train_something_are_not_refused(text: str) -> None:
    assert "CONFIG_NOTHING_TRAINS" not in codes(text)


def test_a_part_at_rate_zero_beside_a_trained_part_is_a_warning_naming_it() -> None:
    # The text encoders train only when the config asks (the default is U-Net only).
    [problem] = [
        p for p in build("network_train_unet_only = false\nunet_lr = 0.0") if p.code == "CONFIG_NO_EFFECT"
    ]
    assert "U-Net" in problem.message and "unet_lr" in problem.message


@pytest.mark.parametrize(
    "text",
    [
        'optimizer_type = "AdamW"\nlearning_rate = 0.05',
        'optimizer_type = "AdamW8bit"\nunet_lr = 1e-8',
        'optimizer_type = "Prodigy"\nlearning_rate = 1e-4',  # train_util.get_optimizer: "too low", lr <= 0.1
    ],
)
def test_rates_that_diverge_or_barely_move_are_warnings(text: str) -> None:
    assert codes(text) == ["CONFIG_RATE_SUSPECT"]


@pytest.mark.parametrize(
    "text",
    [
        'optimizer_type = "Prodigy"',  # learning_rate defaults to 1.0 for Prodigy
        'optimizer_type = "AdamW"\nlearning_rate = 1e-4',
        'optimizer_type = "Adafactor"\nlearning_rate = 0.001',  # relative_step: its own schedule (NO_EFFECT)
        'mixed_precision = "fp16"',  # no_half_vae = true is the default
    ],
)
def test_usual_rates_and_precisions_raise_no_rate_or_nan_problem(text: str) -> None:
    assert not {"CONFIG_RATE_SUSPECT", "CONFIG_DIVERGES"} & set(codes(text))


@pytest.mark.parametrize(
    ("text", "risky"),
    [
        ('mixed_precision = "fp16"\nfull_fp16 = true\noptimizer_type = "AdamW"', True),
        ('mixed_precision = "fp16"\nfull_fp16 = true\noptimizer_type = "AdamW8bit"', False),
        ('full_bf16 = true\noptimizer_type = "AdamW"\nlearning_rate = 1e-5', True),
        ('full_bf16 = true\noptimizer_type = "AdamW"\nlearning_rate = 1e-4', False),
    ],
)
def test_half_precision_weights_warn_where_they_give_nan_or_lose_updates(text: str, risky: bool) -> None:
    assert ("CONFIG_PRECISION_RISK" in codes(text)) is risky


def test_prodigy_with_two_rates_warns_that_only_the_first_counts() -> None:
    found = build(
        'network_train_unet_only = false\noptimizer_type = "Prodigy"\nlearning_rate = 1.0\nunet_lr = 0.5'
    )
    assert any("only the first" in p.message for p in found if p.code == "CONFIG_NO_EFFECT")


# --- kind: argument strings sd-scripts evaluates ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('optimizer_type = "AdamW"\noptimizer_args = ["weight_decay=0.01,", "eps=1e-8"]', "weight_decay"),
        ('optimizer_type = "AdamW"\noptimizer_args = ["betas=0.9"]', "betas"),
        ('optimizer_type = "Adafactor"\noptimizer_args = ["relative_step=\'False\'"]', "relative_step"),
        ('optimizer_type = "AdamW"\noptimizer_args = [" weight_decay=0.01"]', "weight_decay"),
        ('optimizer_type = "AdamW"\noptimizer_args = ["lr=1e-4"]', "lr"),
        ('lr_scheduler_type = "StepLR"\nlr_scheduler_args = ["step_size=10.5"]', "step_size"),
        ('lr_scheduler = "cosine_with_restarts"\nlr_scheduler_args = ["num_cycles=3"]', "num_cycles"),
        ('network_args = ["conv_dim=abc"]', "conv_dim"),
        ('network_args = ["conv_dim = 4", "conv_alpha=1"]', "conv_dim"),
        ('network_args = ["rank_dropout=0.1,"]', "rank_dropout"),
        ('network_args = ["block_dims=4,4,x"]', "block_dims"),
        ('network_module = "networks.dylora"\nnetwork_args = ["unit=two"]', "unit"),
    ],
)
def test_entries_that_crash_or_are_lost_are_errors_naming_the_key(text: str, named: str) -> None:
    errors = [p for p in build(text) if p.severity is Severity.ERROR]
    assert [p.code for p in errors] == ["CONFIG_BAD_VALUE"], errors
    assert named in errors[0].message


@pytest.mark.parametrize(
    "text",
    [
        'optimizer_type = "AdamW"\noptimizer_args = ["betas=(0.9,0.99)", "weight_decay=0.01"]',
        'optimizer_type = "AdamW"\noptimizer_args = ["betas=0.9,0.99"]',  # literal_eval: a tuple, as wanted
        'optimizer_type = "Adafactor"\noptimizer_args = ["eps=(1e-30, 1e-3)", "relative_step=False"]',
        'optimizer_type = "Prodigy"\noptimizer_args = ["d_coef=2", "use_bias_correction=True", "beta3=None"]',
        'lr_scheduler_type = "CosineAnnealingLR"\nlr_scheduler_args = ["T_max=100", "eta_min=1e-6"]',
        'network_args = ["conv_dim=8", "conv_alpha=4", "block_dims=4,4,8"]',
        'network_args = ["conv_dim= 4"]',  # int(" 4") is 4
    ],
)
def test_entries_sd_scripts_passes_on_correctly_are_clean(text: str) -> None:
    assert build(text) == []


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('network_args = ["algo=lora=x"]', "algo"),  # split at the first "=" only: the key is "algo"
        ('optimizer_type = "AdamW"\noptimizer_args = ["weight_decy=0.01"]', "weight_decy"),
    ],
)
def test_unknown_keys_are_warnings(text: str, named: str) -> None:
    [problem] = build(text)
    assert problem.code == "CONFIG_ARGS_UNKNOWN_KEY" and problem.severity is Severity.WARNING
    assert named in problem.message


def test_every_allowed_optimizer_scheduler_and_module_has_its_accepted_keywords_listed() -> None:
    from lora_pipeline.evaluated_args import ArgsKind, receiver_for
    from lora_pipeline.kohya_facts import (
        ALLOWED_NETWORK_MODULES,
        BUILTIN_OPTIMIZERS,
        LR_SCHEDULERS,
        TORCH_LR_SCHEDULERS,
        TORCH_OPTIMIZERS,
    )

    for kind, names in (
        (ArgsKind.OPTIMIZER, BUILTIN_OPTIMIZERS + TORCH_OPTIMIZERS),
        (ArgsKind.SCHEDULER, LR_SCHEDULERS + TORCH_LR_SCHEDULERS),
        (ArgsKind.NETWORK, ALLOWED_NETWORK_MODULES),
    ):
        assert [name for name in names if receiver_for(kind, name) is None] == []


def test_caption_extension_gets_its_missing_dot_as_sd_scripts_adds_it() -> None:
    # train_util.py DreamBoothSubset.__init__: "txt" is read as ".txt"; a path is never an extension
    inputs = PipelineInputs("pets", None, "stabilityai/stable-diffusion-xl-base-1.0", None)
    effective = build_effective_config('caption_extension = "txt"\n', inputs).effective
    assert effective is not None and effective["caption_extension"] == ".txt"
    assert [p.code for p in build('caption_extension = "/etc/x"')] == ["CONFIG_BAD_VALUE"]
