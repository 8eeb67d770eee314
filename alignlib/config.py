"""`TrainConfig`: the one configuration of a training run, shared by the CLI and the notebooks.

Field names follow TRL/transformers (`learning_rate`, `beta`,
`per_device_train_batch_size`, ...). The CLI parses it with
`transformers.HfArgumentParser`; a notebook builds it directly. Each field's
help text lives once, in its metadata.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional


def _help(text: str, default=dataclasses.MISSING, **kw):
    return field(default=default, metadata={"help": text}, **kw)


@dataclass
class TrainConfig:
    method: str = _help("training method; see alignlib.methods.METHODS (e.g. sft, dpo)", "dpo")
    world: str = _help("pocket world: gives the pocket model, generated data and gold judgement", "reviews")
    model: str = _help("'pocket' (SFT pocket model of --world), 'pocket-base', a Hugging Face id or a local folder",
                       "pocket")
    dataset: Optional[str] = _help(
        "local .json/.jsonl file in TRL columns (prompt/chosen/rejected for pairs, prompt/completion for sft); "
        "default: generate data from --world", None)
    output_dir: str = _help("folder for checkpoints, the final model and the log", "runs/alignlib")
    seed: int = _help("seed of initialisation, data order, generated data and sampling", 0)

    # optimisation
    max_steps: int = _help("optimizer steps", 200)
    learning_rate: float = _help("peak learning rate of AdamW", 1e-4)
    lr_scheduler_type: str = _help("transformers scheduler name: constant, linear, cosine, ...", "constant")
    warmup_steps: int = _help("linear warm-up steps", 0)
    weight_decay: float = _help("AdamW weight decay", 0.0)
    max_grad_norm: float = _help("gradient clipping norm (0 = off)", 1.0)
    per_device_train_batch_size: int = _help(
        "examples per process per micro-step: pairs for DPO, prompts for online methods", 16)
    gradient_accumulation_steps: int = _help("micro-steps per optimizer step", 1)
    max_prompt_length: int = _help("prompts longer than this (tokens) are refused", 64)
    max_completion_length: int = _help("completions longer than this (tokens) are truncated, with a warning", 64)

    # method parameters
    beta: float = _help("KL strength β of DPO-style losses (DPO paper; TRL default 0.1)", 0.1)
    loss_type: str = _help("pairwise loss of --method dpo: dpo, ipo, hinge, robust, f_dpo, rpo, sppo_hard, nca_pair, "
                           "bco_pair, exo_pair, apo_zero, apo_down, asft, cpl (alignlib.losses.PAIRWISE_LOSSES)", "dpo")
    label_smoothing: float = _help("conservative DPO / robust DPO: assumed probability ε that a label is flipped", 0.0)
    listwise_loss: str = _help("loss of --method listwise: lipo_lambda, listmle, listnet, pro, dpo_best_worst, "
                               "dpo_all_pairs (alignlib.losses.LISTWISE_LOSSES)", "lipo_lambda")
    rpo_alpha: float = _help("RPO: weight α of the chosen completions' NLL added to DPO", 1.0)
    t_reg_alpha: float = _help("--method t_reg: weight α of the token-weighted DPO term added to DPO (0 = DPO)", 1.0)
    t_reg_tau: float = _help("--method t_reg: softmax temperature τ of the token weights (large = uniform = DPO)", 1.0)
    f_divergence_type: str = _help("f-DPO: reverse_kl (= DPO), forward_kl, js or alpha", "reverse_kl")
    f_alpha_divergence_coef: float = _help("f-DPO with alpha divergence: α (TRL's convention)", 0.5)
    fdpg_divergence: str = _help("f_dpg: the f-divergence D_f(π_θ ‖ p) to the target p ∝ π_ref·exp(r/β): "
                                 "reverse_kl (= KL-regularised RL), forward_kl (= DPG), js or tv", "reverse_kl")
    center_rewards_coefficient: Optional[float] = _help(
        "reward models: weight of mean((r_w + r_l)²), which keeps rewards centred (TRL's RewardConfig)", None)

    # online methods (online_dpo, rloo, grpo): samples drawn from the policy at every step
    reward: str = _help("online methods: 'gold' (the world's gold reward) or a reward-model folder "
                        "(alignlib train --method reward ... /final), normalised to mean 0, std 1 under π_ref", "gold")
    judge: str = _help("online_dpo: 'oracle' (the world's gold preference oracle, with --label_noise) or 'reward' "
                       "(the higher --reward wins)", "oracle")
    samples_per_prompt: int = _help("rloo/grpo: completions sampled per prompt (the group size k); listwise: the list "
                                    "length K of lists generated from the world; ppo with --pf_strategy: samples "
                                    "per prompt before filtering", 4)
    temperature: float = _help("sampling temperature of online methods (1 = sample from π itself)", 1.0)

    # PPO (--method ppo; alignlib.ppo): names as in TRL's former PPOConfig where it had one
    ppo_epochs: int = _help("ppo: passes over each rollout (TRL's ppo_epochs / num_ppo_epochs)", 2)
    num_mini_batches: int = _help("ppo: optimizer steps per pass over a rollout; a rollout holds num_mini_batches × "
                                  "per_device_train_batch_size × gradient_accumulation_steps prompts per process, and "
                                  "a new one is sampled every ppo_epochs × num_mini_batches steps", 1)
    cliprange: float = _help("ppo: clip range ε of the policy ratio (PPO paper and TRL: 0.2)", 0.2)
    cliprange_value: Optional[float] = _help("ppo: clip range of the value update around the rollout's values "
                                             "(TRL: 0.2); None: unclipped value loss", 0.2)
    vf_coef: float = _help("ppo: weight of the critic's value loss in the total loss (TRL: 0.1)", 0.1)
    gamma: float = _help("ppo: discount γ of the token-level MDP (TRL: 1)", 1.0)
    lam: float = _help("ppo: GAE λ (TRL: 0.95)", 0.95)
    kl_estimator: str = _help("ppo: per-token KL estimator of the reward penalty: k1 (TRL's default, unbiased), k2 or "
                              "k3 (unbiased, ≥ 0); the KL coefficient is --beta", "k1")
    kl_target: Optional[float] = _help("ppo: adaptive KL controller's target sequence KL (Ziegler et al. 2019; TRL's "
                                       "adap_kl_ctrl/target); None: β stays --beta", None)
    kl_horizon: int = _help("ppo: adaptive KL controller's horizon in samples (TRL's horizon)", 10_000)
    whiten_rewards: bool = _help("ppo: rescale the token rewards of a rollout to unit variance (TRL's whiten_rewards)",
                                 False)
    whiten_advantages: bool = _help("ppo: whiten the advantages of a rollout to mean 0, std 1 (TRL always did)", True)
    entropy_coef: float = _help("ppo: weight of the entropy bonus (0: none, as TRL)", 0.0)
    score_norm: bool = _help("ppo: normalise the scores by their running mean and std over all rollouts so far "
                             "(PPO-max reward normalisation, Secrets of RLHF I)", False)
    score_clip: Optional[float] = _help("ppo: clip the (normalised) scores to [−c, c] (PPO-max reward clipping; "
                                        "MOSS-RLHF: 10); None: no clipping", None)
    pf_strategy: Optional[str] = _help("ppo: policy filtration (PF-PPO): sample samples_per_prompt completions per "
                                       "prompt and train only on those this rule keeps: best_of_n, best_random or "
                                       "best_worst (alignlib.losses.group.pf_filter); None: one sample per prompt",
                                       None)
    macro_action_size: int = _help("ppo: MA-RLHF macro actions: GAE over chunks of this many tokens (advantages "
                                   "per chunk, values at chunk starts); 1: token-level PPO", 1)

    # self-play on a general preference (nash_md, sppo, dno, inpo; alignlib.selfplay)
    mixture_coef: float = _help("nash_md: weight c of π_ref in the opponent's token-level geometric mixture "
                                "π^{1−c} π_ref^{c} (TRL's NashMDConfig: 0.5)", 0.5)
    eta: float = _help("sppo: step size η of the multiplicative-weights target η(P̂ − ½) (the paper's 1/β); "
                       "inpo: mirror-descent step size η", 10.0)
    tau: float = _help("inpo: strength τ of the pull towards π_ref; τη is π_ref's weight in the prox centre "
                       "(must be in [0, 1])", 0.01)
    dno_margin: float = _help("dno: pairs whose win rates differ by less than this are dropped", 0.0)
    selfplay_iterations: int = _help("sppo/dno/inpo: rounds of alignlib.selfplay.iterate, each with the previous "
                                     "iterate as reference", 3)
    anchor_model: Optional[str] = _help("inpo: the fixed π_ref of the prox term (a --model name or folder) when the "
                                        "reference is the previous iterate (selfplay.iterate sets it); default: the "
                                        "reference itself", None)

    # online DPO with exploration and acceleration (xpo, selm, copg, APO; alignlib.online_dpo, chapter 4b)
    xpo_alpha: float = _help("xpo: weight α of the exploration bonus α·ℓ_θ(y'), y' ~ π_ref (TRL's XPOConfig: 1e-5; "
                             "0 = online DPO)", 1e-5)
    selm_alpha: float = _help("selm: weight α of the optimism term αβ·[ℓ_θ(y') − ℓ_ref(y')] (SELM recipe: 0.001)",
                              0.001)
    xpo_pairs: str = _help("xpo/selm: which pair is judged: 'reference' (y ~ π_θ against y' ~ π_ref, XPO's "
                           "Algorithm 1) or 'policy' (two policy samples as online_dpo, plus y' ~ π_ref for the "
                           "bonus only)", "reference")
    apo_alpha: float = _help("APO (alignlib.online_dpo.accelerated_iterate): Nesterov momentum α of the "
                             "extrapolation θ_{t+1} + α(θ_{t+1} − θ_t) between rounds (0 = iterative DPO)", 0.0)

    # language feedback (--method cut; alignlib.feedback)
    unlikelihood_weight: float = _help("cut: weight w of the unlikelihood term −w·log(1 − p) on judgement-marked "
                                       "tokens (CUT's weight_unlike: 1)", 1.0)

    # offline policy gradient (--method a_lol; alignlib.losses.offline_pg), on lists of scored reference samples
    alol_clip: float = _help("a_lol: clip range ε of the detached sequence ratio π_θ/π_ref, w ∈ [1−ε, 1+ε] (A-LoL's "
                             "code: 0.9); 0: no importance weight (advantage-weighted SFT)", 0.9)

    # data generated from the world (when --dataset is not given)
    num_examples: int = _help("pairs (or SFT demonstrations) generated from --world", 4096)
    label_noise: float = _help("probability that the gold oracle's label is flipped", 0.0)
    max_new_tokens: int = _help("tokens sampled per completion (generated data and online methods)", 32)

    # checkpoints and logging
    save_steps: int = _help("save a checkpoint every N steps (0: only at the end)", 50)
    save_total_limit: int = _help("checkpoints kept (oldest deleted first)", 2)
    resume: bool = _help("resume from the latest checkpoint in output_dir if there is one", True)
    resume_from_checkpoint: Optional[str] = _help(
        "continue from this checkpoint-N folder even if settings changed (e.g. a lower learning rate)", None)
    overwrite_output_dir: bool = _help("delete output_dir's checkpoints and start afresh", False)
    logging_steps: int = _help("print metrics every N steps (they are recorded every step)", 25)
    progress: bool = _help("show a tqdm progress bar", True)

    # scaling
    lora: bool = _help("train LoRA adapters (peft) instead of all weights; the base is the reference", False)
    lora_r: int = _help("LoRA rank", 8)
    lora_alpha: int = _help("LoRA alpha", 16)
    load_in_4bit: bool = _help("load the base model in 4-bit NF4 (bitsandbytes, CUDA only; QLoRA with --lora)", False)
    bf16: bool = _help("bfloat16 mixed precision", False)
    gradient_checkpointing: bool = _help("recompute activations in backward to save memory", False)
    precompute_ref_log_probs: bool = _help(
        "offline methods (dpo, listwise): compute π_ref's log-probs of the whole data set once before training "
        "and free the reference model (saves its memory and one forward pass per step)", False)
    use_cpu: bool = _help("train on CPU even if a GPU is present", False)

    def __post_init__(self):
        from .methods import METHODS
        from .worlds import WORLDS

        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; valid methods: {', '.join(sorted(METHODS))}")
        if self.world not in WORLDS:
            raise ValueError(f"unknown world {self.world!r}; valid worlds: {', '.join(sorted(WORLDS))}")
        for name in ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
                     "max_prompt_length", "max_completion_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.save_total_limit < 1:
            raise ValueError(f"save_total_limit must be ≥ 1 (the latest checkpoint is always kept), got "
                             f"{self.save_total_limit}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        from .losses import PAIRWISE_LOSSES
        from .methods import NEEDS_ONLINE_INPUTS

        if self.loss_type not in PAIRWISE_LOSSES:
            raise ValueError(f"unknown loss_type {self.loss_type!r}; valid: {', '.join(sorted(PAIRWISE_LOSSES))}")
        if self.loss_type in NEEDS_ONLINE_INPUTS:
            raise ValueError(f"loss_type {self.loss_type!r} needs {NEEDS_ONLINE_INPUTS[self.loss_type]}, which "
                             f"neither offline pairs nor the online pair mode provide to --method {self.method}; "
                             f"train with --method {self.loss_type} instead, which brings them (alignlib.online_dpo)")
        if self.xpo_alpha < 0 or self.selm_alpha < 0 or self.apo_alpha < 0:
            raise ValueError(f"xpo_alpha, selm_alpha and apo_alpha must be ≥ 0 (0 switches the term off), got "
                             f"{self.xpo_alpha}, {self.selm_alpha} and {self.apo_alpha}")
        if self.xpo_pairs not in ("reference", "policy"):
            raise ValueError(f"xpo_pairs must be 'reference' (XPO's Algorithm 1) or 'policy' (online DPO's pairs), "
                             f"got {self.xpo_pairs!r}")
        if self.method in ("xpo", "selm") and self.beta <= 0:
            raise ValueError(f"--method {self.method} is DPO with an extra term: beta must be > 0, got {self.beta}")
        from .losses import LISTWISE_LOSSES

        if self.listwise_loss not in LISTWISE_LOSSES:
            raise ValueError(f"unknown listwise_loss {self.listwise_loss!r}; valid: {', '.join(sorted(LISTWISE_LOSSES))}")
        if not 0.0 <= self.alol_clip <= 1.0:
            raise ValueError(f"alol_clip (A-LoL's ratio clip range ε) must be in [0, 1], got {self.alol_clip}")
        if self.samples_per_prompt < 2 and self.method in ("listwise", "online_listwise", "a_lol"):
            raise ValueError(f"--method {self.method} ranks samples of one prompt: samples_per_prompt must be ≥ 2")
        if self.beta < 0 or (self.beta == 0 and self.method in ("dpo", "online_dpo", "listwise", "online_listwise")):
            # DPO-style losses divide the reward by β (r = β·log-ratio): β = 0 leaves nothing to learn
            raise ValueError(f"beta (the KL strength) must be > 0 for --method {self.method} (≥ 0 for rloo/grpo), got "
                             f"{self.beta}; use a small value such as 0.01 for a weak pull towards the reference")
        if self.judge not in ("oracle", "reward"):
            raise ValueError(f"judge must be 'oracle' or 'reward', got {self.judge!r}")
        if self.samples_per_prompt < 2 and self.method in ("rloo", "grpo", "raft", "superhf"):
            raise ValueError(f"--method {self.method} compares samples of one prompt: samples_per_prompt must be ≥ 2")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (sampling), got {self.temperature}")
        if not 0.0 <= self.mixture_coef <= 1.0:
            raise ValueError(f"mixture_coef (π_ref's weight in Nash-MD's geometric mixture) must be in [0, 1], got "
                             f"{self.mixture_coef}")
        if self.eta <= 0 or self.tau < 0 or self.tau * self.eta > 1:
            raise ValueError(f"need eta > 0, tau ≥ 0 and tau·eta ≤ 1 (π_ref's weight in INPO's prox centre); got "
                             f"eta={self.eta}, tau={self.tau}")
        if not 0.0 <= self.dno_margin < 1.0:
            raise ValueError(f"dno_margin compares win rates and must be in [0, 1), got {self.dno_margin}")
        if self.selfplay_iterations < 1:
            raise ValueError(f"selfplay_iterations must be ≥ 1, got {self.selfplay_iterations}")
        if self.method in ("sppo", "dno") and self.samples_per_prompt < 2:
            raise ValueError(f"--method {self.method} estimates win rates against the other samples of a prompt: "
                             "samples_per_prompt must be ≥ 2")
        if self.method == "nash_md" and self.lora:
            raise ValueError("--method nash_md samples from a mixture of policy and reference, which needs a separate "
                             "reference model; --lora is not supported (train all weights)")
        if self.f_divergence_type not in ("reverse_kl", "forward_kl", "js", "alpha"):
            raise ValueError(f"f_divergence_type must be reverse_kl, forward_kl, js or alpha, got "
                             f"{self.f_divergence_type!r}")
        from .losses.fdpg import DIVERGENCES

        if self.fdpg_divergence not in DIVERGENCES:
            raise ValueError(f"unknown fdpg_divergence {self.fdpg_divergence!r}; choose one of {', '.join(DIVERGENCES)}")
        if self.method == "f_dpg" and (self.beta <= 0 or self.samples_per_prompt < 2):
            raise ValueError(f"--method f_dpg needs beta > 0 (the target is π_ref·exp(r/β)) and samples_per_prompt ≥ 2 "
                             f"(Z(x) is estimated from each prompt's samples); got beta={self.beta}, "
                             f"samples_per_prompt={self.samples_per_prompt}")
        if not 0.0 <= self.label_noise <= 0.5:
            raise ValueError(f"label_noise must be in [0, 0.5], got {self.label_noise}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.method == "reward" and self.lora:
            raise ValueError("--lora is not supported with --method reward yet; train the reward model in full")
        self._check_ppo()
        if self.t_reg_alpha < 0 or self.t_reg_tau <= 0:
            raise ValueError(f"t_reg_alpha must be ≥ 0 (0 gives DPO) and t_reg_tau > 0, got {self.t_reg_alpha} and "
                             f"{self.t_reg_tau}")
        if self.method == "t_reg" and self.precompute_ref_log_probs:
            raise ValueError("--method t_reg weights π_ref's log-prob of every token, which precomputed sequence "
                             "log-probs do not keep; drop --precompute_ref_log_probs")
        if self.precompute_ref_log_probs and (METHODS[self.method].data not in ("pairs", "lists")
                                              or not METHODS[self.method].needs_reference):
            raise ValueError(f"--precompute_ref_log_probs needs an offline method with a reference (dpo, listwise); "
                             f"--method {self.method} has none or samples its data during training")
        if self.load_in_4bit and not self.lora:
            raise ValueError("--load_in_4bit trains LoRA adapters on a frozen 4-bit base (QLoRA); add --lora")

    def _check_ppo(self):
        for name in ("ppo_epochs", "num_mini_batches", "kl_horizon"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.cliprange <= 0 or (self.cliprange_value is not None and self.cliprange_value <= 0):
            raise ValueError(f"cliprange and cliprange_value must be > 0 (None turns value clipping off), got "
                             f"{self.cliprange} and {self.cliprange_value}")
        if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.lam <= 1.0):
            raise ValueError(f"gamma and lam must be in [0, 1], got gamma={self.gamma}, lam={self.lam}")
        if self.vf_coef < 0 or self.entropy_coef < 0:
            raise ValueError(f"vf_coef and entropy_coef must be ≥ 0, got {self.vf_coef} and {self.entropy_coef}")
        if self.kl_estimator not in ("k1", "k2", "k3"):
            raise ValueError(f"kl_estimator must be k1, k2 or k3, got {self.kl_estimator!r}")
        if self.kl_target is not None and self.kl_target <= 0:
            raise ValueError(f"kl_target must be > 0 (or None for a fixed β), got {self.kl_target}")
        if self.score_clip is not None and self.score_clip <= 0:
            raise ValueError(f"score_clip must be > 0 (or None for no clipping), got {self.score_clip}")
        if self.pf_strategy not in (None, "best_of_n", "best_random", "best_worst"):
            raise ValueError(f"pf_strategy must be best_of_n, best_random, best_worst or None, got {self.pf_strategy!r}")
        if self.macro_action_size < 1:
            raise ValueError(f"macro_action_size must be ≥ 1 (1: token-level PPO), got {self.macro_action_size}")
        if self.method != "ppo":
            return
        if self.pf_strategy is not None:
            kept = 1 if self.pf_strategy == "best_of_n" else 2
            rows = self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_mini_batches
            if self.samples_per_prompt <= kept or rows % kept:
                raise ValueError(f"--pf_strategy {self.pf_strategy} keeps {kept} of samples_per_prompt completions "
                                 f"per prompt: samples_per_prompt ({self.samples_per_prompt}) must be > {kept} and the "
                                 f"rows of a rollout ({rows}) a multiple of {kept}")
        per_rollout = self.ppo_epochs * self.num_mini_batches
        for name in ("save_steps", "max_steps"):
            if getattr(self, name) % per_rollout:
                value = getattr(self, name)
                raise ValueError(
                    f"--method ppo: {name} ({value}) must be a multiple of ppo_epochs × num_mini_batches "
                    f"({per_rollout}), the optimizer steps per rollout, so that checkpoints fall between rollouts "
                    f"and a resumed run is exact; use e.g. {name} {max(per_rollout, value - value % per_rollout)}")
        if self.temperature != 1.0:
            raise ValueError(f"--method ppo samples at temperature 1 (got {self.temperature}): its ratio and KL "
                             "penalty use the log-probabilities of π itself, and samples from a tempered π would "
                             "make them off-policy (the negative-KL pitfall)")

    # fields that may change between an interrupted run and its resumption
    RESUMABLE_CHANGES = ("max_steps", "save_steps", "save_total_limit", "resume", "logging_steps", "progress",
                         "overwrite_output_dir", "output_dir", "use_cpu", "resume_from_checkpoint")

    def differences(self, other: dict) -> list[str]:
        """Return 'name: old → new' for fields that differ from `other` and forbid resuming."""
        mine = dataclasses.asdict(self)
        return [f"{k}: {other.get(k)!r} → {v!r}" for k, v in mine.items()
                if k not in self.RESUMABLE_CHANGES and other.get(k) != v]
