"""The bibliography: every reading-list paper has an entry, every entry is cited, every citation resolves.

READING_LIST_ENTRIES lists the 69 papers the book is built from (numbered as in
the project's reading list) with their keys in book/references.bib, the depth
each gets and the chapter it belongs to. A paper is *placed* when its key is
cited in its own chapter's "Papers in this chapter" section, next to its
summary; each key is checked to be that paper (titles agree). The book build
(-W) separately fails on a citation without an entry.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# number in the reading list: (bib key, depth target, home, title as the reading list gives it).
# depth: I implemented and measured, D derived or demonstrated, R summarised and placed.
# home: where its own-words summary belongs (HOME_PAGES below; two names: either place).
READING_LIST_ENTRIES = {
    1: ("hong2023cyclealign", "D", "feedback", "CycleAlign: Iterative Distillation from Black-box LLM to White-box Models for Better Human Alignment"),
    2: ("shen2024policy", "I", "ppo", "Policy Filtration in RLHF to Fine-Tune LLM for Code Generation"),
    3: ("tang2024gap", "I", "dpo", "Understanding the performance gap between online and offline alignment algorithms"),
    4: ("munos2024nash", "I", "nash", "Nash Learning from Human Feedback"),
    5: ("chegini2024salsa", "D", "ppo", "SALSA: Soup-based Alignment Learning for Stronger Adaptation in RLHF"),
    6: ("cui2024ultrafeedback", "R", "rm scaling", "UltraFeedback: Boosting Language Models with High-quality Feedback"),
    7: ("poddar2024vpl", "D", "diverse", "Personalizing Reinforcement Learning from Human Feedback with Variational Preference Learning"),
    8: ("hejna2024cpl", "I", "dpo", "Contrastive Prefence Learning: Learning from Human Feedback without RL"),
    9: ("chai2024marlhf", "D", "ppo", "MA-RLHF: Reinforcement Learning from Human Feedback with Macro Actions"),
    10: ("zhang2025inpo", "I", "nash", "Iterative Nash Policy Optimization: Aligning LLMs with General Preferences via No-Regret Learning"),
    11: ("sun2024salmon", "D", "rm", "SALMON: Self-Alignment with Principle-Following Reward Models"),
    12: ("song2024pro", "I", "listwise", "Preference Ranking Optimization for Human Alignment"),
    13: ("wang2024beyond", "I", "dpo", "Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse Divergence Constraints"),
    14: ("liang2025rlhs", "D", "pedagogical", "RLHS: Mitigating Misalignment in RLHF with Hindsight Simulation"),
    15: ("chakraborty2024parl", "R", "ppo", "PARL: A Unified Framework for Policy Alignment in Reinforcement Learning"),
    16: ("fletberliac2024copg", "I", "dpo", "Contrastive Policy Gradient: Aligning LLMs on sequence-level scores in a supervised-friendly fashion"),
    17: ("tian2024rapl", "R", "further", "Maximizing Alignment with Minimal Feedback: Efficiently Learning Rewards for Visuomotor Robot Policy Alignment"),
    18: ("dong2024aligndiff", "R", "further", "AlignDiff: Aligning Diverse Human Preferences via Behavior-Customisable Diffusion Model"),
    19: ("sonkar2024pedagogical", "I", "pedagogical", "Pedagogical Alignment of Large Language Models"),
    20: ("liu2024lipo", "I", "listwise", "LiPO: Listwise Preference Optimization through Learning-to-Rank"),
    21: ("zhou2024seq2seqrm", "I", "feedback", "Sequence to Sequence Reward Modeling: Improving RLHF by Language Feedback"),
    22: ("zheng2023secrets", "I", "ppo", "Secrets of RLHF in Large Language Models Part I: PPO"),
    23: ("zeng2025itool", "R", "further", "Boosting Tool Use of Large Language Models via Iterative Reinforced Fine-Tuning"),
    24: ("liu2024rpo", "I", "dpo", "Provably Mitigating Overoptimization in RLHF: Your SFT Loss is Implicitly an Adversarial Regularizer"),
    25: ("wang2024dpa", "D", "diverse", "Arithmetic Control of LLMs for Diverse User Preferences: Directional Preference Alignment with Multi-Objective Rewards"),
    26: ("go2023aligning", "D", "dpo", "Aligning Language Models with Preferences through f-divergence Minimization"),
    27: ("zhong2024rto", "D", "ppo", "DPO Meets PPO: Reinforced Token Optimization for RLHF"),
    28: ("mukobi2023superhf", "I", "ppo", "SuperHF: Supervised Iterative Learning from Human Feedback"),
    29: ("yu2025rlaifv", "R", "further", "RLAIF-V: Aligning MLLMs through Open-Source AI Feedback for Super GPT-4V Trustworthiness"),
    30: ("huang2024deal", "D", "ppo", "DeAL: Decoding-time Alignment for Large Language Models"),
    31: ("zhang2024seppo", "R", "further", "SePPO: Semi-Policy Preference Optimization for Diffusion Alignment"),
    32: ("zhang2024selm", "D", "dpo", "Self-Exploring Language Models: Active Preference Elicitation for Online Alignment"),
    33: ("lin2024limited", "I", "dpo", "On the Limited Generalization Capability of the Implicit Reward Model Induced by Direct Preference Optimization"),
    34: ("zhang2024rewardaugmented", "D", "dpo", "Reward-Augmented Data Enhances Direct Preference Alignment of LLMs"),
    35: ("baheti2024alol", "D", "ppo", "Improving Language Models with Advantage-based Offline Policy Gradients"),
    36: ("wang2024asft", "I", "dpo", "ASFT: Aligned Supervised Fine-Tuning through Absolute Likelihood"),
    37: ("jing2024fgaif", "R", "further", "FGAIF: Aligning Large Vision-Language Models with Fine-grained AI Feedback"),
    38: ("dong2023raft", "I", "ppo", "RAFT: Reward rAnked FineTuning for Generative Foundation Model Alignment"),
    39: ("he2024apo", "I", "dpo", "Accelerated Preference Optimization for Large Language Model Alignment"),
    40: ("wu2023p3o", "I", "ppo", "Pairwise Proximal Policy Optimization: Harnessing Relative Feedback for LLM Alignment"),
    41: ("tiapkin2024demonstration", "R", "ppo", "Demonstration-Regularized RL"),
    42: ("knox2024models", "D", "rm", "Models of human preference for learning reward functions"),
    43: ("dong2024rlhfworkflow", "I", "dpo", "RLHF Workflow: From Reward Modeling to Online RLHF"),
    44: ("yu2024icpl", "R", "further", "Few-shot In-Context Preference Learning Using Large Language Models"),
    45: ("scheurer2023ilf", "I", "feedback", "Training Language Models with Language Feedback at Scale"),
    46: ("lin2024alignmenttax", "D", "ppo dpo", "Mitigating the Alignment Tax of RLHF"),
    47: ("yuan2024entanglement", "I", "dpo", "A Common Pitfall of Margin-based Language Model Alignment: Gradient Entanglement"),
    48: ("chang2023rlgf", "D", "ppo", "Learning to Generate Better Than Your LLM"),
    49: ("mei2024realhf", "R", "scaling", "ReaLHF: Optimized RLHF Training for Large Language Models through Parameter Reallocation"),
    50: ("wang2024secrets2", "I", "rm", "Secrets of RLHF in Large Language Models Part II: Reward Modeling"),
    51: ("chakraborty2024maxmin", "D", "diverse", "MaxMin-RLHF: Towards Equitable Alignment of Large Language Models with Diverse Human Preferences"),
    52: ("sheng2025hybridflow", "R", "scaling", "HybridFlow: A Flexible and Efficient RLHF Framework"),
    53: ("sun2023rlera", "R", "intro", "Reinforcement Learning in the Era of LLMs: What is Essential? What is needed? An RL Perspective on RLHF, Prompting, and Beyond"),
    54: ("zhou2024treg", "D", "dpo", "T-REG: Preference Optimization with Token-Level Reward Regularization"),
    55: ("wu2024sppo", "I", "nash", "Self-Play Preference Optimization for Language Model Alignment"),
    56: ("rosset2024dno", "I", "nash", "Direct Nash Optimization: Teaching Language Models to Self-Improve with General Preferences"),
    57: ("hua2024intuitive", "D", "pocket", "Intuitive Fine-Tuning: Towards Unifying SFT and RLHF into a Single Process"),
    58: ("wang2023pit", "D", "feedback", "Enable Language Models to Implicitly Learn Self-Improvement From Data"),
    59: ("coste2024ensembles", "I", "rm", "Reward Model Ensembles Help Mitigate Overoptimization"),
    60: ("rafailov2024qstar", "D", "dpo", "From r to Q^*: Your Language Model is Secretly a Q-Function"),
    61: ("weyssow2024codeultrafeedback", "R", "further", "CodeUltraFeedback: An LLM-as-a-Judge Dataset for Aligning Large Language Models to Coding Preferences"),
    62: ("yan2024rewardrobust", "D", "rm", "Reward-Robust RLHF in LLMs"),
    63: ("chen2024ranking", "I", "dpo", "Preference Learning Algorithms Do Not Learn Preference Rankings"),
    64: ("yang2025hallucination", "R", "dpo", "Mitigating Hallucinations in Large Vision-Language Models via DPO: On-Policy Data Hold the Key"),
    65: ("ji2024alignanything", "R", "feedback", "Align Anything: Training All-Modality Models to Follow Instructions with Language Feedback"),
    66: ("xu2023cut", "I", "feedback", "Reasons to Reject? Aligning Language Models with Judgments"),
    67: ("li2023dsp", "D", "feedback", "Guiding Large Language Models via Directional Stimulus Prompting"),
    68: ("xue2023meet", "D", "scaling", "Parameter-Efficient Tuning Helps Language Model Alignment"),
    69: ("xie2024xpo", "I", "dpo", "Exploratory Preference Optimization: Harnessing Implicit Q*-Approximation for Sample-Efficient RLHF"),
}
# The reading list gives these papers' first arXiv titles (or a typo); the bibliography has the published one.
PUBLISHED_TITLES = {
    6: "UltraFeedback: Boosting Language Models with Scaled AI Feedback",
    8: "Contrastive Preference Learning: Learning from Human Feedback without RL",
    11: "SALMON: Self-Alignment with Instructable Reward Models",
    35: "Leftover Lunch: Advantage-based Offline Reinforcement Learning for Language Models",
}
READING_LIST = {n: entry[0] for n, entry in READING_LIST_ENTRIES.items()}  # number -> bib key
# Pages whose "Papers in this chapter" section (a book page: the whole page) may hold a home's summaries.
HOME_PAGES = {
    "intro": ("book/intro.md", "chapters/01_pocket_world.ipynb"),
    "pocket": ("chapters/01_pocket_world.ipynb",),
    "rm": ("chapters/02_reward_models.ipynb",),
    "ppo": ("chapters/03_ppo.ipynb", "chapters/03b_beyond_ppo.ipynb"),
    "dpo": ("chapters/04_dpo_family.ipynb", "chapters/04b_online_dpo.ipynb"),
    "nash": ("chapters/05_nash.ipynb",),
    "listwise": ("chapters/06_listwise.ipynb",),
    "feedback": ("chapters/07_language_feedback.ipynb",),
    "pedagogical": ("chapters/08_pedagogical.ipynb",),
    "diverse": ("chapters/09_diverse_preferences.ipynb",),
    "scaling": ("chapters/10_scaling.ipynb",),
    "further": ("book/further_reading.md",),
}


def bib_titles() -> dict[str, str]:
    """Key -> title of every bibliography entry, braces removed."""
    text = (ROOT / "book" / "references.bib").read_text(encoding="utf-8")
    titles = {}
    for key, body in re.findall(r"^@\w+\{([^,\s]+),(.*?)^\}", text, re.M | re.S):
        found = re.search(r"^\s*title\s*=\s*\{(.*)\}\s*,?\s*$", body, re.M)
        titles[key] = found.group(1).replace("{", "").replace("}", "") if found else ""
    return titles


def _same_title(a: str, b: str) -> bool:
    def letters(s: str) -> str:
        return re.sub(r"[^a-z0-9]", "", s.lower())
    return letters(a) == letters(b)


def test_every_reading_list_key_is_the_right_paper():
    """Each reading-list paper maps to its own entry: the entry's title is the paper's title (a key that
    points at another paper would let a paper go uncited unnoticed)."""
    keys = [entry[0] for entry in READING_LIST_ENTRIES.values()]
    assert len(set(keys)) == 69, f"two reading-list papers share a key: {sorted(k for k in keys if keys.count(k) > 1)}"
    titles = bib_titles()
    wrong = []
    for n, (key, _depth, _home, title) in READING_LIST_ENTRIES.items():
        expected = PUBLISHED_TITLES.get(n, title)
        if key in titles and not _same_title(titles[key], expected):
            wrong.append(f"#{n} {key}: bibliography title {titles[key]!r}, reading list {expected!r}")
    assert not wrong, "reading-list numbers mapped to the wrong entry:\n" + "\n".join(wrong)


def _papers_sections(path: Path) -> str:
    """The markdown of a chapter's "Papers in this chapter" section (up to the next level-2 heading);
    for a book page (.md) the whole page."""
    if path.suffix == ".md":
        return path.read_text(encoding="utf-8")
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    found = re.search(r"^## Papers in this chapter\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert found, f"{path.relative_to(ROOT)} has no '## Papers in this chapter' section"
    return found.group(1)


def test_every_reading_list_paper_is_summarised_where_it_belongs():
    """Each paper is cited in the "Papers in this chapter" section of its own chapter (next to its
    summary), not only somewhere in the book."""
    sections = {page: _papers_sections(ROOT / page) for pages in HOME_PAGES.values() for page in pages}
    misplaced = []
    for n, (key, _depth, home, _title) in READING_LIST_ENTRIES.items():
        pages = tuple(page for part in home.split() for page in HOME_PAGES[part])
        if not any(re.search(rf"\{{cite:[pt]\}}`[^`]*\b{re.escape(key)}\b", sections[p]) for p in pages):
            misplaced.append(f"#{n} {key}: summarise it under 'Papers in this chapter' in one of {pages}")
    assert not misplaced, "\n".join(misplaced)


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
