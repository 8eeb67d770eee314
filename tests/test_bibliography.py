"""The bibliography: every reading-list paper has an entry, every entry is cited, every citation resolves.

READING_LIST maps the 69 papers the book is built from (numbered as in the
project's reading list) to their keys in book/references.bib. A paper is
*placed* when its key is cited from a chapter or a book page, next to its
summary; the book build (-W) separately fails on a citation without an entry.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

READING_LIST = {
    1: "hong2023cyclealign",  # CycleAlign: Iterative Distillation from Black-box LLM to White-box Mod
    2: "shen2024policy",  # Policy Filtration in RLHF to Fine-Tune LLM for Code Generation
    3: "tang2024gap",  # Understanding the performance gap between online and offline alignment
    4: "munos2024nash",  # Nash Learning from Human Feedback
    5: "chegini2024salsa",  # SALSA: Soup-based Alignment Learning for Stronger Adaptation in RLHF
    6: "cui2024ultrafeedback",  # UltraFeedback: Boosting Language Models with High-quality Feedback
    7: "poddar2024vpl",  # Personalizing Reinforcement Learning from Human Feedback with Variatio
    8: "hejna2024cpl",  # Contrastive Prefence Learning: Learning from Human Feedback without RL
    9: "chai2024marlhf",  # MA-RLHF: Reinforcement Learning from Human Feedback with Macro Actions
    10: "zhang2025inpo",  # Iterative Nash Policy Optimization: Aligning LLMs with General Prefere
    11: "sun2024salmon",  # SALMON: Self-Alignment with Principle-Following Reward Models
    12: "song2024pro",  # Preference Ranking Optimization for Human Alignment
    13: "wang2024beyond",  # Beyond Reverse KL: Generalizing Direct Preference Optimization with Di
    14: "liang2025rlhs",  # RLHS: Mitigating Misalignment in RLHF with Hindsight Simulation
    15: "chakraborty2024parl",  # PARL: A Unified Framework for Policy Alignment in Reinforcement Learni
    16: "fletberliac2024copg",  # Contrastive Policy Gradient: Aligning LLMs on sequence-level scores in
    17: "tian2024rapl",  # Maximizing Alignment with Minimal Feedback: Efficiently Learning Rewar
    18: "dong2024aligndiff",  # AlignDiff: Aligning Diverse Human Preferences via Behavior-Customisabl
    19: "sonkar2024pedagogical",  # Pedagogical Alignment of Large Language Models
    20: "liu2024lipo",  # LiPO: Listwise Preference Optimization through Learning-to-Rank
    21: "zhou2024seq2seqrm",  # Sequence to Sequence Reward Modeling: Improving RLHF by Language Feedb
    22: "wang2024secrets2",  # Secrets of RLHF in Large Language Models Part I: PPO
    23: "zeng2025itool",  # Boosting Tool Use of Large Language Models via Iterative Reinforced Fi
    24: "liu2024rpo",  # Provably Mitigating Overoptimization in RLHF: Your SFT Loss is Implici
    25: "wang2024dpa",  # Arithmetic Control of LLMs for Diverse User Preferences: Directional P
    26: "go2023aligning",  # Aligning Language Models with Preferences through f-divergence Minimiz
    27: "zhong2024rto",  # DPO Meets PPO: Reinforced Token Optimization for RLHF
    28: "mukobi2023superhf",  # SuperHF: Supervised Iterative Learning from Human Feedback
    29: "yu2025rlaifv",  # RLAIF-V: Aligning MLLMs through Open-Source AI Feedback for Super GPT-
    30: "huang2024deal",  # DeAL: Decoding-time Alignment for Large Language Models
    31: "zhang2024seppo",  # SePPO: Semi-Policy Preference Optimization for Diffusion Alignment
    32: "zhang2024selm",  # Self-Exploring Language Models: Active Preference Elicitation for Onli
    33: "lin2024limited",  # On the Limited Generalization Capability of the Implicit Reward Model 
    34: "zhang2024rewardaugmented",  # Reward-Augmented Data Enhances Direct Preference Alignment of LLMs
    35: "baheti2024alol",  # Improving Language Models with Advantage-based Offline Policy Gradient
    36: "wang2024asft",  # ASFT: Aligned Supervised Fine-Tuning through Absolute Likelihood
    37: "jing2024fgaif",  # FGAIF: Aligning Large Vision-Language Models with Fine-grained AI Feed
    38: "dong2023raft",  # RAFT: Reward rAnked FineTuning for Generative Foundation Model Alignme
    39: "he2024apo",  # Accelerated Preference Optimization for Large Language Model Alignment
    40: "wu2023p3o",  # Pairwise Proximal Policy Optimization: Harnessing Relative Feedback fo
    41: "tiapkin2024demonstration",  # Demonstration-Regularized RL
    42: "knox2024models",  # Models of human preference for learning reward functions
    43: "dong2024rlhfworkflow",  # RLHF Workflow: From Reward Modeling to Online RLHF
    44: "yu2024icpl",  # Few-shot In-Context Preference Learning Using Large Language Models
    45: "ouyang2022instructgpt",  # Training Language Models with Language Feedback at Scale
    46: "lin2024alignmenttax",  # Mitigating the Alignment Tax of RLHF
    47: "yuan2024entanglement",  # A Common Pitfall of Margin-based Language Model Alignment: Gradient En
    48: "chang2023rlgf",  # Learning to Generate Better Than Your LLM
    49: "mei2024realhf",  # ReaLHF: Optimized RLHF Training for Large Language Models through Para
    50: "wang2024secrets2",  # Secrets of RLHF in Large Language Models Part II: Reward Modeling
    51: "chakraborty2024maxmin",  # MaxMin-RLHF: Towards Equitable Alignment of Large Language Models with
    52: "sheng2025hybridflow",  # HybridFlow: A Flexible and Efficient RLHF Framework
    53: "sun2023rlera",  # Reinforcement Learning in the Era of LLMs: What is Essential? What is 
    54: "zhou2024treg",  # T-REG: Preference Optimization with Token-Level Reward Regularization
    55: "wu2024sppo",  # Self-Play Preference Optimization for Language Model Alignment
    56: "rosset2024dno",  # Direct Nash Optimization: Teaching Language Models to Self-Improve wit
    57: "hua2024intuitive",  # Intuitive Fine-Tuning: Towards Unifying SFT and RLHF into a Single Pro
    58: "wang2023pit",  # Enable Language Models to Implicitly Learn Self-Improvement From Data
    59: "coste2024ensembles",  # Reward Model Ensembles Help Mitigate Overoptimization
    60: "rafailov2024qstar",  # From r to Q^*: Your Language Model is Secretly a Q-Function
    61: "weyssow2024codeultrafeedback",  # CodeUltraFeedback: An LLM-as-a-Judge Dataset for Aligning Large Langua
    62: "yan2024rewardrobust",  # Reward-Robust RLHF in LLMs
    63: "chen2024ranking",  # Preference Learning Algorithms Do Not Learn Preference Rankings
    64: "yang2025hallucination",  # Mitigating Hallucinations in Large Vision-Language Models via DPO: On-
    65: "ji2024alignanything",  # Align Anything: Training All-Modality Models to Follow Instructions wi
    66: "xu2023cut",  # Reasons to Reject? Aligning Language Models with Judgments
    67: "li2023dsp",  # Guiding Large Language Models via Directional Stimulus Prompting
    68: "xue2023meet",  # Parameter-Efficient Tuning Helps Language Model Alignment
    69: "xie2024xpo",  # Exploratory Preference Optimization: Harnessing Implicit Q*-Approximat
}


def bib_keys() -> set[str]:
    text = (ROOT / "book" / "references.bib").read_text(encoding="utf-8")
    keys = re.findall(r"^@\w+\{([^,\s]+),", text, re.M)
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    assert not duplicates, f"duplicate bibliography keys: {duplicates}"
    return set(keys)


def cited_keys() -> set[str]:
    """Keys cited with {cite:p}/{cite:t} in the chapters' markdown cells and the book's pages."""
    texts = [p.read_text(encoding="utf-8") for p in (ROOT / "book").glob("*.md")]
    for path in (ROOT / "chapters").glob("*.ipynb"):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        texts += ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    cited = set()
    for group in re.findall(r"\{cite:[pt]\}`([^`]+)`", "\n".join(texts)):
        cited.update(k.strip() for k in group.split(","))
    return cited


def test_every_reading_list_paper_has_an_entry_and_is_cited():
    assert len(READING_LIST) == 69 and sorted(READING_LIST) == list(range(1, 70))
    keys, cited = bib_keys(), cited_keys()
    missing = {n: k for n, k in READING_LIST.items() if k not in keys}
    assert not missing, f"reading-list papers without a bibliography entry: {missing}"
    uncited = {n: k for n, k in READING_LIST.items() if k not in cited}
    assert not uncited, f"reading-list papers never cited in the book: {uncited}"


def test_every_entry_is_cited_and_every_citation_exists():
    keys, cited = bib_keys(), cited_keys()
    assert not sorted(keys - cited), f"bibliography entries never cited: {sorted(keys - cited)}"
    assert not sorted(cited - keys), f"citations without an entry: {sorted(cited - keys)}"
