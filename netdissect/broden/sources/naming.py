"""Naming: one English label name per key (source, category, local label). See docs/broden-sources.md §6.2-6.3.

Keys are visited by descending frequency. Each claims the names it lists that no earlier key owns; it
is named by its first owned name, or else merges into the label of an owner of one of its names
(the owner whose mean size is closest to its own). Before that, a key's names go through the
synonym rewrite: preferred names are put in front, and names that a present name makes confusing
are dropped (``paper`` drops ``tissue``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

Key = tuple[str, str, int]  # (source, category, local label number)
UNLABELED = "-"

_ARM, _FOOT, _HAND, _LEG = (["arm"], ["foot"], ["hand"], ["leg"])
PREFERRED: dict[str, list[str]] = {
    "left arm": _ARM,
    "right arm": _ARM,
    "person arm": _ARM,
    "left foot": _FOOT,
    "right foot": _FOOT,
    "person foot": _FOOT,
    "left hand": _HAND,
    "right hand": _HAND,
    "person hand": _HAND,
    "left leg": _LEG,
    "right leg": _LEG,
    "person leg": _LEG,
    "left shoulder": ["shoulder"],
    "right shoulder": ["shoulder"],
    "person torso": ["torso"],
    "person head": ["head"],
    "person hair": ["hair"],
    "person nose": ["nose"],
    "person mouth": ["mouth"],
    "person ear": ["ear"],
    "person neck": ["neck"],
    "person eye": ["eye"],
    "person eyebrow": ["eyebrow"],
    "airport-airport-s": ["airport-s"],
    "aeroplane": ["airplane"],
    "airplane": ["airplane", "aeroplane", "plane"],
    "spectacles": ["eyeglasses"],
    "windopane": ["window"],
    "dog": ["dog", "domestic dog", "canis familiaris"],
    "alga": ["algae"],
    "bicycle": ["bicycle", "bike", "cycle"],
    "food": ["food", "solid food"],
    "caput": ["head"],
    "route": ["road"],
    "fencing": ["fence"],
    "flooring": ["floor"],
    "carpet": ["carpet", "carpeting"],
    "shrub": ["bush"],
    "armour": ["armor"],
    "pail": ["bucket"],
    "spigot": ["faucet"],
    "faucet": ["faucet", "spigot"],
    "crt screen": ["screen"],
    "cistern": ["water tank"],
    "video display": ["display"],
    "lift": ["elevator"],
    "hydroplane": ["seaplane"],
    "microwave oven": ["microwave"],
    "falls": ["waterfall"],
    "mike": ["microphone"],
    "windscreen": ["windshield"],
    "fluorescent fixture": ["fluorescent"],
    "water vapour": ["water vapor"],
    "numberplate": ["license plate"],
    "tin can": ["can"],
    "cow": ["cow", "moo-cow"],
    "horse": ["horse", "equus caballus"],
    "kerb": ["curb"],
    "filing cabinet": ["file cabinet"],
    "electrical switch": ["switch"],
    "telephone set": ["telephone"],
    "totaliser": ["adding machine"],
    "television receiver": ["television"],
    "fabric": ["fabric", "cloth", "textile"],
    "textile": ["fabric"],
    "attack aircraft carrier": ["aircraft carrier"],
    "cooking stove": ["stove"],
    "electric-light bulb": ["light bulb"],
}

CONFUSING: dict[str, list[str]] = {
    "flowerpot": ["pot"],
    "toilet": ["throne", "can"],
    "curtain": ["mantle"],
    "fabric": ["material"],
    "file cabinet": ["file"],
    "filing cabinet": ["file"],
    "chest of drawers": ["chest"],
    "fire hydrant": ["plug"],
    "car": ["machine"],
    "closet": ["press"],
    "bicycle": ["wheel"],
    "brochure": ["folder"],
    "paper": ["tissue"],
    "paper towel": ["tissue"],
    "exhaust hood": ["hood"],
    "blanket": ["cover"],
    "carapace": ["shield"],
    "cellular phone": ["cell"],
    "handbag": ["bag"],
    "land": ["soil"],
    "sidewalk": ["pavement"],
    "poster": ["card", "bill"],
    "computer mouse": ["mouse"],
    "steering wheel": ["wheel"],
    "lighthouse": ["beacon"],
    "basketball hoop": ["hoop"],
    "bus": ["passenger vehicle"],
    "head": ["person head"],
    "arm": ["left arm", "right arm", "person arm"],
    "foot": ["left foot", "right foot", "person foot"],
    "hand": ["left hand", "right hand", "person hand"],
    "leg": ["left leg", "right leg", "person leg"],
    "shoulder": ["left shoulder", "right shoulder", "person shoulder"],
    "torso": ["person torso"],
    "hair": ["person hair"],
    "nose": ["person nose"],
    "ear": ["person ear"],
    "neck": ["person neck"],
    "eye": ["person eye"],
    "eyebrow": ["person eyebrow"],
}


def rewrite_synonyms(names: list[str]) -> list[str]:
    """Apply the synonym tables: ``[left arm]`` → ``[arm]``, ``[paper, tissue]`` → ``[paper]``."""
    if not any(n in PREFERRED or n in CONFUSING for n in names):
        return list(names)
    expanded = [p for n in names for p in PREFERRED.get(n, [])] + list(names)
    forbidden = {f for n in expanded for f in CONFUSING.get(n, [])}
    return list(dict.fromkeys(n for n in expanded if n not in forbidden))


def clean_names(names: list[str]) -> list[str]:
    """Lower-case, drop empty names and ``-``, then rewrite synonyms."""
    lowered = [n.strip().lower() for n in names]
    return rewrite_synonyms([n for n in lowered if n and n != UNLABELED])


@dataclass
class Naming:
    """The outcome: every key's label name, and which key owns (claimed) each name."""

    label: dict[Key, str]  # key -> chosen label name ("-" = unlabeled)
    owner: dict[str, Key]  # name -> the key that claimed it
    names: dict[Key, list[str]]  # key -> its names after clean_names

    def syns(self) -> dict[str, list[str]]:
        """Label name -> every other name owned by a key carrying that label (label.csv ``syns``)."""
        out: dict[str, set[str]] = {}
        for name, key in self.owner.items():
            label = self.label[key]
            if label != UNLABELED and name != label:
                out.setdefault(label, set()).add(name)
        return {label: sorted(names) for label, names in out.items()}


def name_keys(freq: Mapping[Key, int], cov: Mapping[Key, float], names_of: Callable[[Key], list[str]]) -> Naming:
    """Choose a label name for every key (docs/broden-sources.md §6.2).

    ``freq``/``cov``: per key, number of images and summed coverage; ``names_of(key)``: the adapter's
    names of the key, preferred first.
    """
    label: dict[Key, str] = {}
    owner: dict[str, Key] = {}
    cleaned: dict[Key, list[str]] = {}
    for key in sorted(freq, key=lambda k: (-freq[k], k)):
        names = cleaned[key] = clean_names(names_of(key))
        for name in names:
            owner.setdefault(name, key)
        own = [n for n in names if owner[n] == key]
        if own:
            label[key] = own[0]
        elif not names:
            label[key] = UNLABELED
        elif len(names) == 1:
            label[key] = label[owner[names[0]]]
        else:
            size = cov[key] / freq[key]
            owners = {owner[n] for n in names}
            best = min(owners, key=lambda k: (abs(cov[k] / freq[k] - size), -freq[k], k))
            label[key] = label[best]
    return Naming(label, owner, cleaned)
