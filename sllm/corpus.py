"""The built-in demo corpus: simple dialogues and short stories, generated deterministically.

`generate_corpus(size_chars, seed)` returns the same text for the same arguments. Documents
are separated by a blank line. Dialogues alternate the speakers `A:` and `B:` (the format
`sllm chat` uses: the user is A, the model is B); stories are one paragraph each. All the
text comes from the templates and word lists written for sllm (sllm.corpus_words).
"""
from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import TypeVar

from .corpus_words import (
    ACTIONS,
    ACTIVITIES,
    ADJECTIVES,
    AILMENTS,
    ANIMALS,
    BODY,
    CLOTHES,
    COLORS,
    DAYS,
    FAMILY,
    FEELINGS,
    FOODS,
    HOMES,
    INSTRUMENTS,
    JOBS,
    LANDMARKS,
    MONTHS,
    MOVES,
    NAMES,
    NUMBERS,
    OBJECTS,
    PLACES,
    PLANTS,
    SEASONS,
    SOUNDS,
    SPORTS,
    SUBJECTS,
    TIMES,
    TOWNS,
    WEATHER,
    article,
    plural,
)
from .fileio import atomic_write_text

USER_PREFIX, BOT_PREFIX = "A:", "B:"

T = TypeVar("T")


def _a(noun: str) -> str:
    return f"{article(noun)} {noun}"


class _Writer:
    """Templates over one seeded random.Random."""

    def __init__(self, seed: int):
        self.r = random.Random(seed)

    def pick(self, items: Sequence[T]) -> T:
        return self.r.choice(items)

    # ---- stories --------------------------------------------------------------------
    def story(self) -> str:
        r = self.r
        name, animal, adj = self.pick(NAMES), self.pick(ANIMALS), self.pick(ADJECTIVES)
        he = r.choice(["he", "she"])
        his = "his" if he == "he" else "her"
        hobby = self.pick(ACTIVITIES)
        lines = [
            f"Once upon a time, there was {_a(adj)} {animal} named {name}.",
            f"{name} lived in {_a(self.pick(HOMES))} near the {self.pick(LANDMARKS)}.",
            f"Every {self.pick(TIMES)}, {name} liked to {hobby[0]}.",
        ]
        plot = r.choice([self._lost_thing, self._visit, self._storm, self._market,
                         self._new_skill, self._helping, self._garden, self._concert])
        lines += plot(name, he, his, hobby)
        lines.append(r.choice([
            f"From that day on, {name} was never {self.pick(['sad', 'lonely', 'afraid'])} again.",
            f"That night, {name} went to sleep with a big smile.",
            f"And {name} learned that friends make every day better.",
            "The end."]))
        return " ".join(lines)

    def _lost_thing(self, name: str, he: str, his: str, hobby: tuple) -> list[str]:
        thing, color = self.pick(OBJECTS), self.pick(COLORS)
        friend, fanimal = self.pick(NAMES), self.pick(ANIMALS)
        place = self.pick(LANDMARKS)
        return [f"One day, {name} lost {his} {color} {thing}.",
                f"{he.capitalize()} looked under the bed and behind the door, but it was not there.",
                f"{name} asked {his} friend {friend} the {fanimal} for help.",
                f"Together they searched near the {place}.",
                f"At last, {friend} found the {color} {thing} under {_a(self.pick(ADJECTIVES))} "
                f"{self.pick(['tree', 'rock', 'bush', 'bench', 'leaf'])}.",
                f"{name} was so {self.pick(['happy', 'glad', 'thankful'])} that "
                f"{he} shared {his} {plural(self.pick(FOODS))} with {friend}."]

    def _visit(self, name: str, he: str, his: str, hobby: tuple) -> list[str]:
        rel, food = self.pick(FAMILY), self.pick(FOODS)
        move = self.pick(MOVES)
        return [f"One {self.pick(WEATHER)} {self.pick(DAYS)}, {name} went to visit {his} {rel}.",
                f"{he.capitalize()} {move[1]} past the {self.pick(LANDMARKS)} and over the "
                f"{self.pick(['bridge', 'hill', 'stream', 'road'])}.",
                f"{his.capitalize()} {rel} made {_a(food)} pie, and they ate it together.",
                f"After that, they {hobby[1]} until the sun went down.",
                f"On the way home, {name} said thank you and waved goodbye."]

    def _storm(self, name: str, he: str, his: str, hobby: tuple) -> list[str]:
        friend, fanimal = self.pick(NAMES), self.pick(ANIMALS)
        return [f"One {self.pick(TIMES)}, a big storm came to the {self.pick(LANDMARKS)}.",
                "The wind was loud and the rain was cold.",
                f"{name} heard {self.pick(SOUNDS)} outside.",
                f"It was {friend} the {fanimal}, who was wet and {self.pick(['scared', 'cold', 'tired'])}.",
                f"{name} opened the door and gave {friend} {_a(self.pick(['blanket', 'towel', 'cup of tea']))}.",
                "They sat by the fire and told stories until the storm was over.",
                f"In the {self.pick(TIMES)}, the sky was {self.pick(['blue', 'clear', 'bright'])} again."]

    def _market(self, name: str, he: str, his: str, hobby: tuple) -> list[str]:
        n, food, food2 = self.pick(NUMBERS), self.pick(FOODS), self.pick(FOODS)
        job = self.pick(JOBS)
        return [f"One {self.pick(DAYS)}, {name} went to the market with {his} "
                f"{self.pick(['basket', 'bag', 'wagon'])}.",
                f"{he.capitalize()} bought {n} {plural(food)} and some {plural(food2)}.",
                f"On the way, {he} met {_a(job)} who had lost {_a(self.pick(OBJECTS))}.",
                f"{name} helped the {job}, and the {job} gave {name} {_a(self.pick(COLORS))} "
                f"{self.pick(OBJECTS)} as a present.",
                f"When {he} got home, {he} cooked {_a(self.pick(['soup', 'stew', 'pie', 'salad']))} "
                f"with the {plural(food)}."]

    def _new_skill(self, name: str, he: str, his: str, hobby: tuple) -> list[str]:
        skill, teacher = self.pick(ACTIVITIES), self.pick(NAMES)
        return [f"But {name} could not {skill[0]}, and that made {'him' if he == 'he' else 'her'} "
                f"{self.pick(['sad', 'worried', 'quiet'])}.",
                f"{teacher} the {self.pick(ANIMALS)} said, I can teach you.",
                f"Every day they practiced near the {self.pick(LANDMARKS)}.",
                f"At first it was hard, and {name} fell down {self.pick(NUMBERS)} times.",
                f"But {he} did not give up.",
                f"By {self.pick(SEASONS)}, {name} was {skill[2]} better than anyone."]

    def _helping(self, name: str, he: str, his: str, hobby: tuple) -> list[str]:
        other, oanimal, act = self.pick(NAMES), self.pick(ANIMALS), self.pick(ACTIONS)
        thing = self.pick(OBJECTS)
        return [f"One day, {name} saw {other} the {oanimal} sitting alone by the {self.pick(LANDMARKS)}.",
                f"{other} was {self.pick(['sad', 'tired', 'lonely', 'hungry'])} because "
                f"{self.pick(['the', 'a'])} {thing} was broken.",
                f"{name} said, do not worry, I will help you.",
                f"{he.capitalize()} {act[1]} the {thing} and then they fixed it together.",
                f"{other} smiled and said, thank you, you are a good friend.",
                f"Now {name} and {other} {hobby[0]} together every {self.pick(DAYS)}."]

    def _garden(self, name: str, he: str, his: str, hobby: tuple) -> list[str]:
        plant, plant2, month = self.pick(PLANTS), self.pick(PLANTS), self.pick(MONTHS)
        pest = self.pick(ANIMALS)
        return [f"In {month}, {name} planted {_a(plant)} and some {plural(plant2)} in the garden.",
                f"{he.capitalize()} watered them every {self.pick(TIMES)} with a {self.pick(COLORS)} can.",
                f"One day, {_a(pest)} came and started to eat the {plural(plant2)}.",
                f"{name} did not shout. {he.capitalize()} gave the {pest} some "
                f"{plural(self.pick(FOODS))} instead.",
                f"The {pest} was {self.pick(['happy', 'thankful', 'surprised'])} and never ate "
                f"the {plural(plant2)} again.",
                f"By {self.pick(SEASONS)}, the {plant} was "
                f"{self.pick(['tall', 'tall and strong', 'full of flowers'])}."]

    def _concert(self, name: str, he: str, his: str, hobby: tuple) -> list[str]:
        inst, town, friend = self.pick(INSTRUMENTS), self.pick(TOWNS), self.pick(NAMES)
        return [f"{name} wanted to play the {inst} at the big concert in {town}.",
                f"Every evening, {he} practiced with {his} friend {friend}, who played the "
                f"{self.pick(INSTRUMENTS)}.",
                f"On the day of the concert, {name} felt {self.pick(['nervous', 'scared', 'excited'])}.",
                f"But when the music started, {he} played "
                f"{self.pick(['beautifully', 'very well', 'with a big smile'])}.",
                f"Everyone in {town} clapped, and {friend} gave {name} {_a(self.pick(COLORS))} flower."]

    # ---- dialogues --------------------------------------------------------------------
    def dialogue(self) -> str:
        topic = self.r.choice([self._greeting, self._food, self._weekend, self._shopping,
                               self._weather, self._pets, self._work, self._directions,
                               self._school, self._hobby, self._health, self._clothes,
                               self._trip])
        turns = topic()
        return "\n".join(f"{USER_PREFIX if i % 2 == 0 else BOT_PREFIX} {t}"
                         for i, t in enumerate(turns))

    def _greeting(self) -> list[str]:
        f1, f2, name = self.pick(FEELINGS), self.pick(FEELINGS), self.pick(NAMES)
        return [self.r.choice(["Hello!", "Hi!", f"Good {self.pick(TIMES)}!", "Hey there!"])
                + " How are you?",
                f"I am {f1}, thank you. How are you?",
                f"I am {f2}. My name is {name}. What is your name?",
                f"My name is {self.pick(NAMES)}. Nice to meet you, {name}.",
                "Nice to meet you too."]

    def _food(self) -> list[str]:
        food, food2 = self.pick(FOODS), self.pick(FOODS)
        return [f"What do you like to eat for {self.pick(['breakfast', 'lunch', 'dinner'])}?",
                f"I like {plural(food)} and {plural(food2)}. What about you?",
                f"I like {plural(self.pick(FOODS))}. Do you like {plural(food)} with "
                f"{self.pick(['honey', 'cheese', 'butter', 'jam', 'rice'])}?",
                self.r.choice(["Yes, that is very good.", "No, I do not like that.",
                               "I have never tried it."])]

    def _weekend(self) -> list[str]:
        act, act2, day = self.pick(ACTIVITIES), self.pick(ACTIVITIES), self.pick(DAYS)
        place, rel = self.pick(PLACES), self.pick(FAMILY)
        return [f"What did you do on {day}?",
                f"I went to the {place} with my {rel}. We {act[1]}.",
                "That sounds fun! Did you have a good time?",
                f"Yes, it was {self.pick(['great', 'wonderful', 'fun', 'nice'])}. "
                f"What did you do?",
                f"I stayed at home and {act2[1]}.",
                f"Maybe next {day} we can go {act[2]} together."]

    def _shopping(self) -> list[str]:
        n, food, price = self.pick(NUMBERS), self.pick(FOODS), self.pick(NUMBERS)
        return [f"Good {self.pick(TIMES)}. Can I help you?",
                f"Yes, please. I would like {n} {plural(food)}.",
                "Here you are. Anything else?",
                f"How much is {_a(self.pick(OBJECTS))}?",
                f"It is {price} dollars.",
                self.r.choice(["I will take it, thank you.", "That is too much, sorry.",
                               "Okay, here is the money."])]

    def _weather(self) -> list[str]:
        w, w2, act = self.pick(WEATHER), self.pick(WEATHER), self.pick(ACTIVITIES)
        return ["What is the weather like today?",
                f"It is {w} today.",
                f"Will it be {w2} tomorrow?",
                self.r.choice([f"I think so. Take your {self.pick(['umbrella', 'coat', 'hat'])}.",
                               "I do not know. Let us hope for the best."]),
                f"Then I will stay inside and {act[0]}."]

    def _pets(self) -> list[str]:
        pet, name, color, food = self.pick(ANIMALS), self.pick(NAMES), self.pick(COLORS), self.pick(FOODS)
        return ["Do you have a pet?",
                f"Yes, I have {_a(pet)}. Its name is {name}.",
                f"What color is {name}?",
                f"{name} is {color} and very {self.pick(ADJECTIVES)}.",
                f"What does {name} like to eat?",
                f"{name} likes {plural(food)} very much."]

    def _work(self) -> list[str]:
        job, place = self.pick(JOBS), self.pick(PLACES)
        return ["What do you do?",
                f"I am {_a(job)}. I work at the {place}.",
                "Do you like your job?",
                self.r.choice(["Yes, I love it.", "It is hard, but I like it.",
                               "Sometimes. It makes me tired."]),
                "When do you start work?",
                f"I start at {self.pick(NUMBERS)} in the {self.pick(TIMES[:2])}."]

    def _directions(self) -> list[str]:
        place, landmark = self.pick(PLACES), self.pick(LANDMARKS)
        side = self.r.choice(["left", "right"])
        return [f"Excuse me, where is the {place}?",
                f"Go straight and turn {side} at the {landmark}.",
                "Is it far from here?",
                f"No, it is about {self.pick(NUMBERS)} minutes on foot.",
                "Thank you very much!",
                "You are welcome."]


    def _school(self) -> list[str]:
        subj, subj2 = self.pick(SUBJECTS), self.pick(SUBJECTS)
        return ["What is your favorite subject at school?",
                f"I like {subj} best. It is {self.pick(['fun', 'easy', 'interesting', 'exciting'])}.",
                f"Really? I think {subj} is {self.pick(['hard', 'boring', 'difficult'])}. I like {subj2}.",
                f"Our {subj2} teacher is very {self.pick(ADJECTIVES)}.",
                "Do you have homework today?",
                self.r.choice([f"Yes, I have to finish my {subj} homework.", "No, not today.",
                               f"Only a little. I will do it after {self.pick(['lunch', 'dinner', 'school'])}."])]

    def _hobby(self) -> list[str]:
        sport, inst = self.pick(SPORTS), self.pick(INSTRUMENTS)
        return ["What do you do in your free time?",
                f"I play {sport} with my {self.pick(FAMILY)}. Do you play {sport}?",
                f"No, but I play the {inst}.",
                f"That is cool! How long have you played the {inst}?",
                f"For {self.pick(NUMBERS)} years. I practice every {self.pick(DAYS)}.",
                "Maybe you can teach me one day."]

    def _health(self) -> list[str]:
        part, ail = self.pick(BODY), self.pick(AILMENTS)
        return ["You look tired. Are you okay?",
                f"Not really. I have {ail}, and my {part} hurts.",
                "Oh no! Did you see a doctor?",
                f"Yes. The doctor said I should rest and drink {self.pick(['water', 'tea', 'warm milk'])}.",
                "I hope you feel better soon.",
                "Thank you. You are very kind."]

    def _clothes(self) -> list[str]:
        item, color, color2 = self.pick(CLOTHES), self.pick(COLORS), self.pick(COLORS)
        return [f"I like your {item}. Is it new?",
                f"Yes, I bought it at the shop in {self.pick(TOWNS)} last {self.pick(DAYS)}.",
                f"Did they have it in {color2}?",
                f"No, only in {color} and {self.pick(COLORS)}.",
                f"It looks {self.pick(['great', 'nice', 'warm', 'pretty'])} on you."]

    def _trip(self) -> list[str]:
        town, month, who = self.pick(TOWNS), self.pick(MONTHS), self.pick(FAMILY)
        return [f"Where are you going in {month}?",
                f"I am going to {town} with my {who}.",
                "How will you get there?",
                f"We will go by {self.r.choice(['train', 'bus', 'car', 'boat', 'bike'])}. "
                f"It takes {self.pick(NUMBERS)} hours.",
                f"What will you do in {town}?",
                f"We will visit the {self.pick(PLACES)} and eat {plural(self.pick(FOODS))}."]


def generate_corpus(size_chars: int = 3_000_000, seed: int = 0) -> str:
    """About size_chars characters of dialogues and stories (whole documents), separated by
    blank lines; the same text for the same (size_chars, seed)."""
    if size_chars <= 0:
        raise ValueError(f"size_chars must be positive, got {size_chars}")
    w = _Writer(seed)
    docs, total = [], 0
    while total < size_chars:
        doc = w.dialogue() if w.r.random() < 0.5 else w.story()
        docs.append(doc)
        total += len(doc) + 2
    return "\n\n".join(docs) + "\n"


def write_corpus(path: str | os.PathLike[str], size_chars: int = 3_000_000, seed: int = 0) -> str:
    """Write generate_corpus(...) to `path` atomically; returns the path."""
    path = os.fspath(path)
    atomic_write_text(path, generate_corpus(size_chars, seed))
    return path
