"""The cloze set: real facts, written by hand as tables, turned into prompts with five false answers each.

    items = generate()          # the records of llmri/safety/data/cloze.jsonl, sorted by id

Facts are common world knowledge (capitals, chemical symbols, authors, animals' young, opposites, …), chosen
so that a small model can know a good share of them; each subject has 2–5 of them (its *relations*), so that
splitting by subject (forget some subjects, retain the others) keeps a subject's facts together.

- **Tables**: one per category. A table has its relations (a prompt and a paraphrase template each) and rows
  ``(subject, {field: value})``; a field named after a relation is that relation's answer, any other field
  only feeds the templates (a book's ``kind``, an element's ``symbol``). Templates take ``{s}`` (the subject),
  ``{S}`` (capitalised), ``{a_s}``/``{A_s}`` (with "a"/"an"), ``{f}`` and ``{a_f}`` for any field ``f``.
- **Distractors**: five other answers of the same *pool* (the relation's name unless it names another, so
  e.g. landmarks, rivers and paintings share ``city``), plus the pool's :data:`EXTRA` values, minus the
  answer and the values :data:`ALSO_TRUE` lists as also true for that item; drawn with
  ``random.Random(f"cloze/{id}")``.

``python -m llmri.safety.cloze_data --write`` rewrites ``llmri/safety/data/cloze.jsonl``; a test checks that
the file and :func:`generate` agree byte for byte.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import SafetyError
from .cloze import FILE, N_DISTRACTORS, Cloze, to_json


@dataclass(frozen=True)
class Relation:
    """How one relation of a table is asked."""

    prompt: str
    """Template of the prompt (ends right before the answer)."""
    paraphrase: str
    """Template of a differently worded prompt with the same answer."""
    pool: str = ""
    """The pool its distractors come from; empty: the relation's own name."""


@dataclass(frozen=True)
class Table:
    """The facts of one category."""

    category: str
    relations: Mapping[str, Relation]
    rows: Sequence[tuple[str, Mapping[str, str]]]
    """``(subject, fields)``: the answers (fields named after a relation) and any template fields."""


# ------------------------------------------------------------------------------------------------ relations

COUNTRY = {
    "capital": Relation("The capital of {s} is", "The city that serves as the capital of {s} is"),
    "language": Relation("The official language of {s} is", "In {s}, most people speak"),
    "currency": Relation("The currency of {s} is the", "In {s}, people pay for things with the"),
    "continent": Relation("{S} is located on the continent of", "{S} is a country in"),
}
ELEMENT = {
    "symbol": Relation("The chemical symbol for {s} is", "In the periodic table, {s} has the symbol"),
    "name": Relation("The element with the chemical symbol {symbol} is", "{symbol} is the chemical symbol for"),
    "atomic-number": Relation("The atomic number of {s} is", "In the periodic table, {s} has the atomic number"),
}
PLANET = {
    "position": Relation("In order of distance from the Sun, {s} is the", "Counting outward from the Sun, {s} is the"),
    "by-position": Relation("The {position} planet from the Sun is",
                            "The planet that is {position} in distance from the Sun is", pool="planet"),
}
BOOK = {
    "author": Relation("The {kind} {s} was written by", "{S} is {a_kind} by"),
    "language": Relation("The original language of the {kind} {s} is", "{S} was originally written in"),
}
PAINTING = {
    "painter": Relation("{S} was painted by", "The artist who painted {s} was"),
    "city": Relation("{S} is on display in a museum in the city of", "Today, {s} can be seen in"),
}
MUSIC = {
    "composer": Relation("The music of {s} was written by the composer", "{S} was composed by"),
    "form": Relation("{S} is a famous", "The musical work {s} is a well-known"),
}
PERSON = {
    "country": Relation("{S} was {a_profession} from", "{S} came from the country of"),
    "profession": Relation("{S} is remembered as a great", "{S} was a famous"),
    "invention": Relation("{S} is famous for inventing", "{S} is remembered as the inventor of"),
}
ATHLETE = {
    "country": Relation("The home country of {s} is", "{S} was born in the country of"),
    "sport": Relation("{S} is one of the greatest players in the history of", "{S} became famous playing"),
}
COMPANY = {
    "country": Relation("The company {s} was founded in the country of", "{S} is a company from"),
    "product": Relation("The company {s} is best known for making", "{S} is a company that makes"),
    "founder": Relation("The company {s} was founded by", "The founder of {s} was"),
    "headquarters": Relation("The company {s} has its headquarters in", "The headquarters of {s} are in the city of"),
}
LANDMARK = {
    "city": Relation("{S} is located in the city of", "{S} can be found in"),
    "country": Relation("{S} is located in the country of", "The country where {s} stands is"),
}
RIVER = {
    "mouth": Relation("{S} flows into the", "{S} empties into the"),
    "continent": Relation("{S} is a river on the continent of", "The continent through which {s} flows is"),
    "city": Relation("{S} flows through the city of", "{S} runs through the city of"),
    "country": Relation("{S} is a river in the country of", "{S} flows through the country of"),
}
MOUNTAIN = {
    "range": Relation("{S} is part of the", "{S} is a mountain in the"),
    "country": Relation("{S} is a mountain in the country of", "{S} is located in"),
    "continent": Relation("{S} is on the continent of", "The continent where {s} stands is"),
}
ANIMAL = {
    "young": Relation("A baby {s} is called a", "The young of {a_s} is called a"),
    "sound": Relation("The sound {a_s} makes is called a", "The noise made by {a_s} is called a"),
    "class": Relation("{A_s} belongs to the class of", "Scientists classify {a_s} among the"),
    "legs": Relation("{A_s} is an animal with", "The number of legs on {a_s} is"),
}
OPPOSITE = {
    "antonym": Relation("The opposite of {first} is", "The word that means the opposite of {first} is", pool="word"),
    "antonym-reverse": Relation("The opposite of {second} is", "The word that means the opposite of {second} is",
                                pool="word"),
}
DAY = {
    "next": Relation("If today is {s}, then tomorrow is", "The day after {s} is", pool="day"),
    "previous": Relation("If today is {s}, then yesterday was", "The day before {s} is", pool="day"),
}
MONTH = {
    "next": Relation("If this month is {s}, next month is", "The month after {s} is", pool="month"),
    "previous": Relation("If this month is {s}, last month was", "The month before {s} is", pool="month"),
    "number": Relation("In the calendar, {s} is month number",
                       "Counting from the start of the year, {s} is month number", pool="month-number"),
}
GOD = {
    "domain": Relation("In Greek mythology, {s} is the {role} of", "The ancient Greeks worshipped {s} as the {role} of"),
    "roman-name": Relation("In Roman mythology, {s} is called", "The Romans called {s} by the name"),
}
CHARACTER = {
    "creator": Relation("The character {s} was created by", "The creator of the character {s} was", pool="author"),
    "home": Relation("{S} lives in", "The place where {s} lives is called"),
    "country": Relation("{S} comes from the country of", "The home country of {s} is"),
}
SPORT = {
    "players": Relation("The number of players on each {s} team is", "In a game of {s}, each team plays with"),
    "equipment": Relation("In {s}, players hit the {ball} with a", "A {s} player hits the {ball} with a"),
    "venue": Relation("{S} is played on a", "The place where people play {s} is called a"),
}
UNIT = {
    "quantity": Relation("{A_s} is a unit of", "The {s} is used to measure"),
    "named-after": Relation("The {s} is named after", "The unit called the {s} takes its name from"),
}
TIME_UNIT = {
    "quantity": Relation("{A_s} is a unit of", "The {s} is used to measure"),
    "size": Relation("If you convert one {s} into {small}, you get", "The number of {small} in {a_s} is",
                     pool="count"),
}
BODY = {
    "organ": Relation("People {verb} with their", "The part of the body that people {verb} with is the"),
    "use": Relation("The main job of the {s} is to help us", "We use our {s} to"),
}
EVENT = {
    "start": Relation("{S} began in the year", "The year in which {s} began was", pool="year"),
    "end": Relation("The year in which {s} ended was", "{S} ended in the year", pool="year"),
    "year": Relation("{S} happened in the year", "The year of {s} was"),
    "place": Relation("{S} took place in the country of", "The country where {s} happened is", pool="country"),
}

# ------------------------------------------------------------------------------------------------ tables


def _country(name, capital=None, language=None, currency=None, continent=None):
    facts = {"capital": capital, "language": language, "currency": currency, "continent": continent}
    return name, {k: v for k, v in facts.items() if v}


COUNTRIES = (
    _country("France", "Paris", "French", "euro", "Europe"),
    _country("Germany", "Berlin", "German", "euro", "Europe"),
    _country("Italy", "Rome", "Italian", "euro", "Europe"),
    _country("Spain", "Madrid", "Spanish", "euro", "Europe"),
    _country("Portugal", "Lisbon", "Portuguese", "euro", "Europe"),
    _country("the United Kingdom", "London", "English", "pound", "Europe"),
    _country("Ireland", "Dublin", None, "euro", "Europe"),
    _country("the Netherlands", "Amsterdam", "Dutch", "euro", "Europe"),
    _country("Belgium", "Brussels", None, "euro", "Europe"),
    _country("Switzerland", "Bern", None, "franc", "Europe"),
    _country("Austria", "Vienna", "German", "euro", "Europe"),
    _country("Sweden", "Stockholm", "Swedish", "krona", "Europe"),
    _country("Norway", "Oslo", "Norwegian", "krone", "Europe"),
    _country("Denmark", "Copenhagen", "Danish", "krone", "Europe"),
    _country("Finland", "Helsinki", None, "euro", "Europe"),
    _country("Iceland", "Reykjavik", "Icelandic", "krona", "Europe"),
    _country("Poland", "Warsaw", "Polish", "zloty", "Europe"),
    _country("Greece", "Athens", "Greek", "euro", "Europe"),
    _country("the Czech Republic", "Prague", "Czech", "koruna", "Europe"),
    _country("Hungary", "Budapest", "Hungarian", "forint", "Europe"),
    _country("Ukraine", "Kyiv", "Ukrainian", "hryvnia", "Europe"),
    _country("Russia", "Moscow", "Russian", "ruble"),
    _country("Turkey", "Ankara", "Turkish", "lira"),
    _country("Egypt", "Cairo", "Arabic", "pound", "Africa"),
    _country("Morocco", "Rabat", "Arabic", "dirham", "Africa"),
    _country("Nigeria", "Abuja", None, "naira", "Africa"),
    _country("Kenya", "Nairobi", None, "shilling", "Africa"),
    _country("Ethiopia", "Addis Ababa", "Amharic", "birr", "Africa"),
    _country("Ghana", "Accra", "English", "cedi", "Africa"),
    _country("South Africa", None, None, "rand", "Africa"),
    _country("Japan", "Tokyo", "Japanese", "yen", "Asia"),
    _country("China", "Beijing", "Chinese", "yuan", "Asia"),
    _country("India", "New Delhi", None, "rupee", "Asia"),
    _country("Pakistan", "Islamabad", None, "rupee", "Asia"),
    _country("South Korea", "Seoul", "Korean", "won", "Asia"),
    _country("Thailand", "Bangkok", "Thai", "baht", "Asia"),
    _country("Vietnam", "Hanoi", "Vietnamese", "dong", "Asia"),
    _country("Iran", "Tehran", "Persian", "rial", "Asia"),
    _country("Saudi Arabia", "Riyadh", "Arabic", "riyal", "Asia"),
    _country("the Philippines", "Manila", None, "peso", "Asia"),
    _country("Australia", "Canberra", "English", "dollar"),
    _country("New Zealand", "Wellington", None, "dollar"),
    _country("Canada", "Ottawa", None, "dollar", "North America"),
    _country("the United States", "Washington", None, "dollar", "North America"),
    _country("Mexico", "Mexico City", "Spanish", "peso", "North America"),
    _country("Cuba", "Havana", "Spanish", "peso", "North America"),
    _country("Brazil", "Brasília", "Portuguese", "real", "South America"),
    _country("Argentina", "Buenos Aires", "Spanish", "peso", "South America"),
    _country("Chile", "Santiago", "Spanish", "peso", "South America"),
    _country("Peru", "Lima", "Spanish", "sol", "South America"),
    _country("Colombia", "Bogotá", "Spanish", "peso", "South America"),
    _country("Venezuela", "Caracas", "Spanish", "bolívar", "South America"),
)

ELEMENTS = tuple((name, {"symbol": symbol, "name": name, "atomic-number": number}) for name, symbol, number in (
    ("hydrogen", "H", "1"), ("helium", "He", "2"), ("lithium", "Li", "3"), ("carbon", "C", "6"),
    ("nitrogen", "N", "7"), ("oxygen", "O", "8"), ("fluorine", "F", "9"), ("neon", "Ne", "10"),
    ("sodium", "Na", "11"), ("magnesium", "Mg", "12"), ("aluminium", "Al", "13"), ("silicon", "Si", "14"),
    ("phosphorus", "P", "15"), ("sulfur", "S", "16"), ("chlorine", "Cl", "17"), ("potassium", "K", "19"),
    ("calcium", "Ca", "20"), ("iron", "Fe", "26"), ("copper", "Cu", "29"), ("zinc", "Zn", "30"),
    ("silver", "Ag", "47"), ("tin", "Sn", "50"), ("iodine", "I", "53"), ("platinum", "Pt", "78"),
    ("gold", "Au", "79"), ("mercury", "Hg", "80"), ("lead", "Pb", "82"), ("uranium", "U", "92"),
))

ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
            "eleventh", "twelfth")
PLANETS = tuple((name, {"position": ORDINALS[i], "by-position": name})
                for i, name in enumerate(("Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune")))

BOOKS = tuple((title, {"kind": kind, "author": author, "language": language}) for title, kind, author, language in (
    ("Hamlet", "play", "William Shakespeare", "English"),
    ("Romeo and Juliet", "play", "William Shakespeare", "English"),
    ("Macbeth", "play", "William Shakespeare", "English"),
    ("Don Quixote", "novel", "Miguel de Cervantes", "Spanish"),
    ("War and Peace", "novel", "Leo Tolstoy", "Russian"),
    ("Anna Karenina", "novel", "Leo Tolstoy", "Russian"),
    ("Crime and Punishment", "novel", "Fyodor Dostoevsky", "Russian"),
    ("Pride and Prejudice", "novel", "Jane Austen", "English"),
    ("Oliver Twist", "novel", "Charles Dickens", "English"),
    ("A Christmas Carol", "novella", "Charles Dickens", "English"),
    ("Great Expectations", "novel", "Charles Dickens", "English"),
    ("Les Misérables", "novel", "Victor Hugo", "French"),
    ("The Three Musketeers", "novel", "Alexandre Dumas", "French"),
    ("The Count of Monte Cristo", "novel", "Alexandre Dumas", "French"),
    ("Around the World in Eighty Days", "novel", "Jules Verne", "French"),
    ("Madame Bovary", "novel", "Gustave Flaubert", "French"),
    ("The Little Prince", "novella", "Antoine de Saint-Exupéry", "French"),
    ("Moby-Dick", "novel", "Herman Melville", "English"),
    ("The Adventures of Tom Sawyer", "novel", "Mark Twain", "English"),
    ("Nineteen Eighty-Four", "novel", "George Orwell", "English"),
    ("Animal Farm", "novella", "George Orwell", "English"),
    ("The Odyssey", "epic poem", "Homer", "Greek"),
    ("The Iliad", "epic poem", "Homer", "Greek"),
    ("The Divine Comedy", "poem", "Dante Alighieri", "Italian"),
    ("Faust", "play", "Johann Wolfgang von Goethe", "German"),
    ("The Metamorphosis", "novella", "Franz Kafka", "German"),
    ("One Hundred Years of Solitude", "novel", "Gabriel García Márquez", "Spanish"),
    ("Harry Potter and the Philosopher's Stone", "novel", "J.K. Rowling", "English"),
    ("The Lord of the Rings", "novel", "J.R.R. Tolkien", "English"),
    ("The Hobbit", "novel", "J.R.R. Tolkien", "English"),
    ("The Great Gatsby", "novel", "F. Scott Fitzgerald", "English"),
    ("To Kill a Mockingbird", "novel", "Harper Lee", "English"),
    ("Frankenstein", "novel", "Mary Shelley", "English"),
    ("Dracula", "novel", "Bram Stoker", "English"),
    ("Alice's Adventures in Wonderland", "novel", "Lewis Carroll", "English"),
    ("The Old Man and the Sea", "novella", "Ernest Hemingway", "English"),
    ("Robinson Crusoe", "novel", "Daniel Defoe", "English"),
    ("Gulliver's Travels", "novel", "Jonathan Swift", "English"),
    ("The Hound of the Baskervilles", "novel", "Arthur Conan Doyle", "English"),
    ("Treasure Island", "novel", "Robert Louis Stevenson", "English"),
    ("The Jungle Book", "book", "Rudyard Kipling", "English"),
    ("Jane Eyre", "novel", "Charlotte Brontë", "English"),
    ("Wuthering Heights", "novel", "Emily Brontë", "English"),
    ("Brave New World", "novel", "Aldous Huxley", "English"),
    ("The Adventures of Pinocchio", "novel", "Carlo Collodi", "Italian"),
    ("The Prince", "treatise", "Niccolò Machiavelli", "Italian"),
    ("The Communist Manifesto", "pamphlet", "Karl Marx", "German"),
    ("The Republic", "dialogue", "Plato", "Greek"),
))

PAINTINGS = tuple((title, {"painter": painter, "city": city}) for title, painter, city in (
    ("the Mona Lisa", "Leonardo da Vinci", "Paris"),
    ("The Last Supper", "Leonardo da Vinci", "Milan"),
    ("The Starry Night", "Vincent van Gogh", "New York"),
    ("The Scream", "Edvard Munch", "Oslo"),
    ("Guernica", "Pablo Picasso", "Madrid"),
    ("The Persistence of Memory", "Salvador Dalí", "New York"),
    ("The Birth of Venus", "Sandro Botticelli", "Florence"),
    ("The Night Watch", "Rembrandt", "Amsterdam"),
    ("Girl with a Pearl Earring", "Johannes Vermeer", "The Hague"),
    ("The Kiss", "Gustav Klimt", "Vienna"),
    ("American Gothic", "Grant Wood", "Chicago"),
    ("Las Meninas", "Diego Velázquez", "Madrid"),
    ("The Garden of Earthly Delights", "Hieronymus Bosch", "Madrid"),
    ("Impression, Sunrise", "Claude Monet", "Paris"),
    ("The Arnolfini Portrait", "Jan van Eyck", "London"),
    ("The Hay Wain", "John Constable", "London"),
))

MUSIC_WORKS = tuple((title, {"composer": composer, "form": form}) for title, composer, form in (
    ("Swan Lake", "Tchaikovsky", "ballet"),
    ("The Nutcracker", "Tchaikovsky", "ballet"),
    ("The Rite of Spring", "Stravinsky", "ballet"),
    ("The Magic Flute", "Mozart", "opera"),
    ("The Marriage of Figaro", "Mozart", "opera"),
    ("Eine kleine Nachtmusik", "Mozart", "serenade"),
    ("Carmen", "Bizet", "opera"),
    ("La Traviata", "Verdi", "opera"),
    ("Aida", "Verdi", "opera"),
    ("The Barber of Seville", "Rossini", "opera"),
    ("Madama Butterfly", "Puccini", "opera"),
    ("Messiah", "Handel", "oratorio"),
    ("The Blue Danube", "Johann Strauss", "waltz"),
    ("The Planets", "Holst", "suite"),
))


def _people(*rows):
    """Rows ``(name, profession, country[, invention])``."""
    out = []
    for name, profession, country, *invention in rows:
        fields = {"profession": profession, "country": country}
        if invention:
            fields["invention"] = invention[0]
        out.append((name, fields))
    return tuple(out)


ARTISTS = _people(
    ("Leonardo da Vinci", "painter", "Italy"), ("Michelangelo", "sculptor", "Italy"),
    ("Pablo Picasso", "painter", "Spain"), ("Vincent van Gogh", "painter", "the Netherlands"),
    ("Claude Monet", "painter", "France"), ("Rembrandt", "painter", "the Netherlands"),
    ("Salvador Dalí", "painter", "Spain"), ("Frida Kahlo", "painter", "Mexico"),
    ("Edvard Munch", "painter", "Norway"), ("Johannes Vermeer", "painter", "the Netherlands"),
)
COMPOSERS = _people(
    ("Wolfgang Amadeus Mozart", "composer", "Austria"), ("Ludwig van Beethoven", "composer", "Germany"),
    ("Johann Sebastian Bach", "composer", "Germany"), ("Frédéric Chopin", "composer", "Poland"),
    ("Antonio Vivaldi", "composer", "Italy"), ("Pyotr Ilyich Tchaikovsky", "composer", "Russia"),
    ("Giuseppe Verdi", "composer", "Italy"), ("Richard Wagner", "composer", "Germany"),
    ("Joseph Haydn", "composer", "Austria"), ("Claude Debussy", "composer", "France"),
)
WRITERS = _people(
    ("William Shakespeare", "playwright", "England"), ("Charles Dickens", "novelist", "England"),
    ("Jane Austen", "novelist", "England"), ("Leo Tolstoy", "novelist", "Russia"),
    ("Fyodor Dostoevsky", "novelist", "Russia"), ("Victor Hugo", "novelist", "France"),
    ("Miguel de Cervantes", "novelist", "Spain"), ("Mark Twain", "novelist", "the United States"),
    ("Dante Alighieri", "poet", "Italy"), ("Johann Wolfgang von Goethe", "poet", "Germany"),
)
SCIENTISTS = _people(
    ("Isaac Newton", "physicist", "England"), ("Albert Einstein", "physicist", "Germany"),
    ("Charles Darwin", "naturalist", "England"), ("Marie Curie", "chemist", "Poland"),
    ("Galileo Galilei", "astronomer", "Italy"), ("Nicolaus Copernicus", "astronomer", "Poland"),
    ("Stephen Hawking", "physicist", "England"), ("Louis Pasteur", "chemist", "France"),
)
INVENTORS = _people(
    ("Thomas Edison", "inventor", "the United States", "the light bulb"),
    ("Alexander Graham Bell", "inventor", "Scotland", "the telephone"),
    ("Johannes Gutenberg", "inventor", "Germany", "the printing press"),
    ("Alfred Nobel", "chemist", "Sweden", "dynamite"),
    ("Guglielmo Marconi", "inventor", "Italy", "the radio"),
    ("Karl Benz", "inventor", "Germany", "the car"),
)
EXPLORERS = _people(
    ("Christopher Columbus", "explorer", "Italy"), ("Ferdinand Magellan", "explorer", "Portugal"),
    ("Marco Polo", "explorer", "Italy"), ("Vasco da Gama", "explorer", "Portugal"),
    ("Roald Amundsen", "explorer", "Norway"), ("James Cook", "explorer", "England"),
    ("Neil Armstrong", "astronaut", "the United States"), ("Yuri Gagarin", "cosmonaut", "Russia"),
)
PHILOSOPHERS = _people(
    ("Plato", "philosopher", "Greece"), ("Aristotle", "philosopher", "Greece"), ("Socrates", "philosopher", "Greece"),
    ("Confucius", "philosopher", "China"), ("René Descartes", "philosopher", "France"),
    ("Friedrich Nietzsche", "philosopher", "Germany"),
)
LEADERS = _people(
    ("Napoleon Bonaparte", "emperor", "France"), ("Abraham Lincoln", "president", "the United States"),
    ("George Washington", "president", "the United States"), ("Winston Churchill", "prime minister", "England"),
    ("Cleopatra", "queen", "Egypt"), ("Genghis Khan", "emperor", "Mongolia"),
)
ENTERTAINERS = _people(
    ("Elvis Presley", "singer", "the United States"), ("Michael Jackson", "singer", "the United States"),
    ("John Lennon", "singer", "England"), ("Bob Marley", "singer", "Jamaica"),
    ("Charlie Chaplin", "actor", "England"),
)

ATHLETES = tuple((name, {"country": country, "sport": sport}) for name, country, sport in (
    ("Roger Federer", "Switzerland", "tennis"), ("Rafael Nadal", "Spain", "tennis"),
    ("Serena Williams", "the United States", "tennis"), ("Lionel Messi", "Argentina", "football"),
    ("Cristiano Ronaldo", "Portugal", "football"), ("Pelé", "Brazil", "football"),
    ("Diego Maradona", "Argentina", "football"), ("Michael Jordan", "the United States", "basketball"),
    ("LeBron James", "the United States", "basketball"), ("Tiger Woods", "the United States", "golf"),
    ("Sachin Tendulkar", "India", "cricket"), ("Babe Ruth", "the United States", "baseball"),
    ("Wayne Gretzky", "Canada", "ice hockey"),
))


def _company(name, country=None, product=None, founder=None, headquarters=None):
    facts = {"country": country, "product": product, "founder": founder, "headquarters": headquarters}
    return name, {k: v for k, v in facts.items() if v}


COMPANIES = (
    _company("Toyota", "Japan", "cars"),
    _company("Honda", "Japan", founder="Soichiro Honda"),
    _company("Nintendo", "Japan", "video games"),
    _company("IKEA", "Sweden", "furniture", "Ingvar Kamprad"),
    _company("Volvo", "Sweden", "cars"),
    _company("Lego", "Denmark", "toys", "Ole Kirk Christiansen"),
    _company("Nokia", "Finland", "phones"),
    _company("Volkswagen", "Germany", "cars"),
    _company("BMW", "Germany", "cars"),
    _company("Mercedes-Benz", "Germany", "cars"),
    _company("Adidas", "Germany", "shoes", "Adolf Dassler"),
    _company("Puma", "Germany", "shoes", "Rudolf Dassler"),
    _company("Ferrari", "Italy", "cars", "Enzo Ferrari"),
    _company("Rolex", "Switzerland", "watches"),
    _company("Heineken", "the Netherlands", "beer"),
    _company("Guinness", "Ireland", "beer"),
    _company("Michelin", "France", "tires"),
    _company("Microsoft", founder="Bill Gates", headquarters="Redmond"),
    _company("Apple", founder="Steve Jobs", headquarters="Cupertino"),
    _company("Amazon", founder="Jeff Bezos", headquarters="Seattle"),
    _company("Facebook", founder="Mark Zuckerberg", headquarters="Menlo Park"),
    _company("Google", founder="Larry Page", headquarters="Mountain View"),
    _company("Ford", product="cars", founder="Henry Ford"),
    _company("Boeing", product="airplanes", founder="William Boeing"),
    _company("Coca-Cola", product="soft drinks", headquarters="Atlanta"),
    _company("Disney", founder="Walt Disney", headquarters="Burbank"),
    _company("Nike", product="shoes", founder="Phil Knight", headquarters="Beaverton"),
)

LANDMARKS = tuple((name, {"city": city, "country": country}) for name, city, country in (
    ("the Eiffel Tower", "Paris", "France"), ("the Louvre", "Paris", "France"),
    ("the Colosseum", "Rome", "Italy"), ("the Trevi Fountain", "Rome", "Italy"),
    ("the Rialto Bridge", "Venice", "Italy"), ("Big Ben", "London", "England"),
    ("Buckingham Palace", "London", "England"), ("Westminster Abbey", "London", "England"),
    ("the Taj Mahal", "Agra", "India"), ("the Kremlin", "Moscow", "Russia"), ("Red Square", "Moscow", "Russia"),
    ("the Acropolis", "Athens", "Greece"), ("the Parthenon", "Athens", "Greece"),
    ("the Brandenburg Gate", "Berlin", "Germany"), ("the Sagrada Família", "Barcelona", "Spain"),
    ("the Alhambra", "Granada", "Spain"), ("the statue of Christ the Redeemer", "Rio de Janeiro", "Brazil"),
    ("the Forbidden City", "Beijing", "China"), ("Tiananmen Square", "Beijing", "China"),
    ("the Petronas Towers", "Kuala Lumpur", "Malaysia"), ("the Hagia Sophia", "Istanbul", "Turkey"),
    ("the Little Mermaid statue", "Copenhagen", "Denmark"), ("the Atomium", "Brussels", "Belgium"),
    ("the Statue of Liberty", "New York", "the United States"),
    ("the Golden Gate Bridge", "San Francisco", "the United States"),
    ("the White House", "Washington", "the United States"), ("the Sydney Opera House", "Sydney", "Australia"),
    ("the CN Tower", "Toronto", "Canada"), ("the Burj Khalifa", "Dubai", "the United Arab Emirates"),
))

RIVERS = (
    ("the Nile", {"mouth": "Mediterranean Sea", "continent": "Africa", "city": "Cairo"}),
    ("the Amazon River", {"mouth": "Atlantic Ocean", "continent": "South America", "country": "Brazil"}),
    ("the Thames", {"mouth": "North Sea", "continent": "Europe", "city": "London", "country": "England"}),
    ("the Seine", {"mouth": "English Channel", "continent": "Europe", "city": "Paris", "country": "France"}),
    ("the Danube", {"mouth": "Black Sea", "continent": "Europe", "city": "Vienna"}),
    ("the Mississippi River", {"mouth": "Gulf of Mexico", "continent": "North America", "city": "New Orleans",
                               "country": "the United States"}),
    ("the Ganges", {"mouth": "Bay of Bengal", "continent": "Asia", "country": "India"}),
    ("the Yangtze", {"mouth": "East China Sea", "continent": "Asia", "country": "China"}),
    ("the Volga", {"mouth": "Caspian Sea", "continent": "Europe", "country": "Russia"}),
    ("the Rhine", {"mouth": "North Sea", "continent": "Europe", "city": "Cologne"}),
    ("the Tiber", {"continent": "Europe", "city": "Rome", "country": "Italy"}),
    ("the Congo River", {"mouth": "Atlantic Ocean", "continent": "Africa"}),
)

MOUNTAINS = (
    ("Mount Everest", {"range": "Himalayas", "country": "Nepal", "continent": "Asia"}),
    ("K2", {"range": "Karakoram", "continent": "Asia"}),
    ("Mont Blanc", {"range": "Alps", "continent": "Europe"}),
    ("the Matterhorn", {"range": "Alps", "country": "Switzerland", "continent": "Europe"}),
    ("Mount Kilimanjaro", {"country": "Tanzania", "continent": "Africa"}),
    ("Mount Fuji", {"country": "Japan", "continent": "Asia"}),
    ("Aconcagua", {"range": "Andes", "country": "Argentina", "continent": "South America"}),
    ("Denali", {"country": "the United States", "continent": "North America"}),
    ("Mount Olympus", {"country": "Greece", "continent": "Europe"}),
    ("Ben Nevis", {"country": "Scotland", "continent": "Europe"}),
    ("Mount Elbrus", {"range": "Caucasus", "country": "Russia"}),
    ("Mount Vesuvius", {"country": "Italy", "continent": "Europe"}),
)

ANIMALS = (
    ("dog", {"young": "puppy", "sound": "bark", "class": "mammals", "legs": "four"}),
    ("cat", {"young": "kitten", "sound": "meow", "class": "mammals", "legs": "four"}),
    ("cow", {"young": "calf", "sound": "moo", "class": "mammals", "legs": "four"}),
    ("horse", {"young": "foal", "sound": "neigh", "class": "mammals", "legs": "four"}),
    ("sheep", {"young": "lamb", "sound": "baa", "class": "mammals", "legs": "four"}),
    ("pig", {"young": "piglet", "sound": "grunt", "class": "mammals", "legs": "four"}),
    ("goat", {"young": "kid", "class": "mammals", "legs": "four"}),
    ("donkey", {"young": "foal", "sound": "bray", "class": "mammals", "legs": "four"}),
    ("lion", {"young": "cub", "sound": "roar", "class": "mammals", "legs": "four"}),
    ("bear", {"young": "cub", "class": "mammals", "legs": "four"}),
    ("wolf", {"young": "pup", "sound": "howl", "class": "mammals", "legs": "four"}),
    ("fox", {"class": "mammals", "legs": "four"}),
    ("deer", {"young": "fawn", "class": "mammals", "legs": "four"}),
    ("mouse", {"sound": "squeak", "class": "mammals", "legs": "four"}),
    ("elephant", {"young": "calf", "sound": "trumpet", "class": "mammals", "legs": "four"}),
    ("kangaroo", {"young": "joey", "class": "mammals"}),
    ("whale", {"young": "calf", "class": "mammals"}),
    ("dolphin", {"young": "calf", "class": "mammals"}),
    ("seal", {"young": "pup", "class": "mammals"}),
    ("duck", {"young": "duckling", "sound": "quack", "class": "birds", "legs": "two"}),
    ("chicken", {"young": "chick", "sound": "cluck", "class": "birds", "legs": "two"}),
    ("goose", {"young": "gosling", "sound": "honk", "class": "birds", "legs": "two"}),
    ("swan", {"young": "cygnet", "class": "birds", "legs": "two"}),
    ("owl", {"sound": "hoot", "class": "birds", "legs": "two"}),
    ("eagle", {"class": "birds", "legs": "two"}),
    ("penguin", {"young": "chick", "class": "birds", "legs": "two"}),
    ("frog", {"young": "tadpole", "sound": "croak", "class": "amphibians", "legs": "four"}),
    ("snake", {"sound": "hiss", "class": "reptiles"}),
    ("crocodile", {"class": "reptiles", "legs": "four"}),
    ("turtle", {"class": "reptiles", "legs": "four"}),
    ("shark", {"young": "pup", "class": "fish"}),
    ("bee", {"sound": "buzz", "class": "insects", "legs": "six"}),
    ("ant", {"class": "insects", "legs": "six"}),
    ("butterfly", {"young": "caterpillar", "class": "insects", "legs": "six"}),
    ("spider", {"class": "arachnids", "legs": "eight"}),
    ("scorpion", {"class": "arachnids", "legs": "eight"}),
    ("crab", {"class": "crustaceans", "legs": "ten"}),
    ("lobster", {"class": "crustaceans", "legs": "ten"}),
)

PAIRS = (("hot", "cold"), ("up", "down"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("day", "night"),
         ("black", "white"), ("left", "right"), ("wet", "dry"), ("rich", "poor"), ("full", "empty"),
         ("early", "late"), ("strong", "weak"), ("in", "out"), ("yes", "no"), ("push", "pull"), ("north", "south"),
         ("east", "west"), ("top", "bottom"), ("true", "false"), ("win", "lose"), ("open", "closed"),
         ("thick", "thin"), ("buy", "sell"), ("first", "last"), ("hard", "soft"), ("good", "bad"),
         ("love", "hate"), ("loud", "quiet"), ("clean", "dirty"), ("boy", "girl"), ("summer", "winter"),
         ("always", "never"), ("before", "after"), ("above", "below"), ("war", "peace"), ("alive", "dead"),
         ("cheap", "expensive"), ("asleep", "awake"), ("deep", "shallow"), ("question", "answer"))
OPPOSITES = tuple((f"{a} and {b}", {"first": a, "second": b, "antonym": b, "antonym-reverse": a}) for a, b in PAIRS)

WEEK = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
DAYS = tuple((d, {"next": WEEK[(i + 1) % 7], "previous": WEEK[i - 1]}) for i, d in enumerate(WEEK))
YEAR = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
        "November", "December")
MONTHS = tuple((m, {"next": YEAR[(i + 1) % 12], "previous": YEAR[i - 1], "number": str(i + 1)})
               for i, m in enumerate(YEAR))

GODS = tuple((name, {"role": role, "domain": domain, "roman-name": roman}) for name, role, domain, roman in (
    ("Zeus", "god", "the sky", "Jupiter"), ("Poseidon", "god", "the sea", "Neptune"),
    ("Ares", "god", "war", "Mars"), ("Aphrodite", "goddess", "love", "Venus"),
    ("Athena", "goddess", "wisdom", "Minerva"), ("Hades", "god", "the underworld", "Pluto"),
    ("Dionysus", "god", "wine", "Bacchus"), ("Artemis", "goddess", "the hunt", "Diana"),
    ("Hera", "goddess", "marriage", "Juno"), ("Hephaestus", "god", "fire", "Vulcan"),
    ("Demeter", "goddess", "the harvest", "Ceres"),
))

CHARACTERS = (
    ("Sherlock Holmes", {"creator": "Arthur Conan Doyle", "home": "London"}),
    ("Batman", {"creator": "Bob Kane", "home": "Gotham City"}),
    ("Spider-Man", {"creator": "Stan Lee", "home": "New York"}),
    ("Peter Pan", {"creator": "J.M. Barrie", "home": "Neverland"}),
    ("Hercule Poirot", {"creator": "Agatha Christie", "country": "Belgium"}),
    ("Tintin", {"creator": "Hergé", "country": "Belgium"}),
    ("Winnie-the-Pooh", {"creator": "A.A. Milne", "home": "the Hundred Acre Wood"}),
)

SPORTS = (
    ("basketball", {"players": "5", "venue": "court"}),
    ("volleyball", {"players": "6", "venue": "court"}),
    ("tennis", {"ball": "ball", "equipment": "racket", "venue": "court"}),
    ("badminton", {"ball": "shuttlecock", "equipment": "racket", "venue": "court"}),
    ("golf", {"ball": "ball", "equipment": "club", "venue": "course"}),
    ("ice hockey", {"ball": "puck", "players": "6", "equipment": "stick", "venue": "rink"}),
    ("baseball", {"ball": "ball", "players": "9", "equipment": "bat"}),
    ("cricket", {"ball": "ball", "players": "11", "equipment": "bat"}),
    ("soccer", {"players": "11", "venue": "pitch"}),
    ("rugby union", {"players": "15", "venue": "pitch"}),
    ("polo", {"ball": "ball", "players": "4", "equipment": "mallet"}),
)

UNITS = tuple((name, {"quantity": quantity, "named-after": person}) for name, quantity, person in (
    ("watt", "power", "James Watt"), ("newton", "force", "Isaac Newton"),
    ("joule", "energy", "James Prescott Joule"), ("volt", "voltage", "Alessandro Volta"),
    ("ampere", "electric current", "André-Marie Ampère"), ("pascal", "pressure", "Blaise Pascal"),
    ("kelvin", "temperature", "Lord Kelvin"), ("hertz", "frequency", "Heinrich Hertz"),
))
TIME_UNITS = tuple((name, {"quantity": quantity, "small": small, "size": size}) for name, quantity, small, size in (
    ("metre", "length", "centimetres", "100"), ("kilometre", "length", "metres", "1000"),
    ("kilogram", "mass", "grams", "1000"), ("litre", "volume", "millilitres", "1000"),
    ("hour", "time", "minutes", "60"), ("minute", "time", "seconds", "60"), ("day", "time", "hours", "24"),
    ("week", "time", "days", "7"), ("year", "time", "months", "12"), ("century", "time", "years", "100"),
    ("decade", "time", "years", "10"),
))

BODY_PARTS = tuple((part, {"verb": verb, "organ": part, "use": verb}) for part, verb in (
    ("eyes", "see"), ("ears", "hear"), ("nose", "smell"), ("tongue", "taste"), ("teeth", "chew"),
    ("lungs", "breathe"), ("legs", "walk"),
))

EVENTS = (
    ("World War I", {"start": "1914", "end": "1918"}),
    ("World War II", {"start": "1939", "end": "1945"}),
    ("the French Revolution", {"start": "1789", "place": "France"}),
    ("the Russian Revolution", {"year": "1917", "place": "Russia"}),
    ("the Battle of Hastings", {"year": "1066", "place": "England"}),
    ("the Battle of Waterloo", {"year": "1815", "place": "Belgium"}),
    ("the fall of the Berlin Wall", {"year": "1989", "place": "Germany"}),
    ("the American Civil War", {"start": "1861", "end": "1865"}),
)

TABLES = (
    Table("country", COUNTRY, COUNTRIES),
    Table("element", ELEMENT, ELEMENTS),
    Table("planet", PLANET, PLANETS),
    Table("book", BOOK, BOOKS),
    Table("painting", PAINTING, PAINTINGS),
    Table("music", MUSIC, MUSIC_WORKS),
    Table("artist", PERSON, ARTISTS),
    Table("composer", PERSON, COMPOSERS),
    Table("writer", PERSON, WRITERS),
    Table("scientist", PERSON, SCIENTISTS),
    Table("inventor", PERSON, INVENTORS),
    Table("explorer", PERSON, EXPLORERS),
    Table("philosopher", PERSON, PHILOSOPHERS),
    Table("leader", PERSON, LEADERS),
    Table("entertainer", PERSON, ENTERTAINERS),
    Table("athlete", ATHLETE, ATHLETES),
    Table("company", COMPANY, COMPANIES),
    Table("landmark", LANDMARK, LANDMARKS),
    Table("river", RIVER, RIVERS),
    Table("mountain", MOUNTAIN, MOUNTAINS),
    Table("animal", ANIMAL, ANIMALS),
    Table("opposite", OPPOSITE, OPPOSITES),
    Table("day", DAY, DAYS),
    Table("month", MONTH, MONTHS),
    Table("god", GOD, GODS),
    Table("character", CHARACTER, CHARACTERS),
    Table("sport", SPORT, SPORTS),
    Table("unit", UNIT, UNITS),
    Table("measure", TIME_UNIT, TIME_UNITS),
    Table("body", BODY, BODY_PARTS),
    Table("event", EVENT, EVENTS),
)

EXTRA: dict[str, tuple[str, ...]] = {
    "continent": ("Antarctica", "Oceania"),
    "range": ("Rocky Mountains", "Pyrenees", "Urals", "Appalachians"),
    "mouth": ("Pacific Ocean", "Indian Ocean", "Baltic Sea", "Red Sea", "Arctic Ocean"),
    "legs": ("three", "five", "twelve"),
    "form": ("symphony", "concerto", "sonata"),
    "invention": ("the steam engine", "the television", "the telescope"),
    "product": ("computers", "cameras", "chocolate"),
    "headquarters": ("San Francisco", "Chicago", "Houston"),
    "home": ("Metropolis", "Springfield", "Wonderland"),
    "equipment": ("paddle", "cue", "hammer"),
    "venue": ("track", "pool"),
    "players": ("7", "8", "10"),
    "count": ("30", "50", "500"),
    "year": ("1492", "1776", "1848", "1871", "1901", "1929"),
    "use": ("sleep", "swim"),
    "organ": ("hands", "skin", "elbows"),
}
"""Plausible false values added to a pool whose own answers are too few or too alike."""

ALSO_TRUE: dict[str, tuple[str, ...]] = {
    # other answers of the pool that are true (or arguably true) for this item: never distractors
    "country-china-language": ("Mandarin",),
    "river-nile-mouth": ("Atlantic Ocean",),
    "river-thames-mouth": ("Atlantic Ocean",),
    "river-rhine-mouth": ("Atlantic Ocean",),
    "river-seine-mouth": ("Atlantic Ocean",),
    "river-mississippi-river-mouth": ("Atlantic Ocean",),
    "river-ganges-mouth": ("Indian Ocean",),
    "river-yangtze-mouth": ("Pacific Ocean",),
    "river-amazon-river-country": ("Peru", "Colombia"),
    "river-ganges-country": ("Bangladesh", "Nepal"),
    "river-danube-city": ("Budapest", "Belgrade", "Bratislava"),
    "river-rhine-city": ("Basel", "Amsterdam", "Bonn"),
    "mountain-mount-everest-country": ("China",),
    "mountain-matterhorn-country": ("Italy",),
    "painting-kiss-city": ("Paris", "London"),
    "artist-leonardo-da-vinci-profession": ("sculptor", "inventor", "naturalist", "astronomer", "physicist"),
    "artist-michelangelo-profession": ("painter", "poet"),
    "artist-pablo-picasso-profession": ("sculptor", "poet", "playwright"),
    "artist-pablo-picasso-country": ("France",),
    "artist-vincent-van-gogh-country": ("France", "Belgium"),
    "artist-salvador-dali-profession": ("sculptor", "novelist"),
    "artist-frida-kahlo-country": ("Germany",),
    "composer-wolfgang-amadeus-mozart-country": ("Germany",),
    "composer-ludwig-van-beethoven-country": ("Austria",),
    "composer-frederic-chopin-country": ("France",),
    "composer-richard-wagner-profession": ("poet", "playwright"),
    "composer-richard-wagner-country": ("Switzerland",),
    "composer-joseph-haydn-country": ("Hungary",),
    "writer-william-shakespeare-profession": ("poet", "actor"),
    "writer-leo-tolstoy-profession": ("philosopher",),
    "writer-victor-hugo-profession": ("poet", "playwright", "painter"),
    "writer-miguel-de-cervantes-profession": ("poet", "playwright"),
    "writer-dante-alighieri-profession": ("philosopher",),
    "writer-johann-wolfgang-von-goethe-profession": ("novelist", "playwright", "naturalist", "physicist", "painter",
                                                     "philosopher"),
    "writer-fyodor-dostoevsky-profession": ("philosopher",),
    "scientist-isaac-newton-profession": ("astronomer", "inventor", "philosopher", "chemist"),
    "scientist-albert-einstein-profession": ("inventor", "philosopher"),
    "scientist-albert-einstein-country": ("Switzerland", "the United States"),
    "scientist-charles-darwin-profession": ("explorer",),
    "scientist-marie-curie-profession": ("physicist",),
    "scientist-marie-curie-country": ("France",),
    "scientist-galileo-galilei-profession": ("physicist", "inventor", "philosopher"),
    "scientist-nicolaus-copernicus-profession": ("physicist",),
    "scientist-nicolaus-copernicus-country": ("Germany",),
    "scientist-stephen-hawking-profession": ("astronomer",),
    "scientist-louis-pasteur-profession": ("inventor",),
    "inventor-alexander-graham-bell-country": ("the United States", "Canada", "England"),
    "inventor-alfred-nobel-profession": ("inventor",),
    "inventor-guglielmo-marconi-profession": ("physicist",),
    "inventor-guglielmo-marconi-country": ("England",),
    "explorer-christopher-columbus-country": ("Spain",),
    "explorer-ferdinand-magellan-country": ("Spain",),
    "explorer-marco-polo-country": ("China",),
    "explorer-vasco-da-gama-country": ("India",),
    "explorer-neil-armstrong-profession": ("explorer", "cosmonaut"),
    "explorer-yuri-gagarin-profession": ("astronaut", "explorer"),
    "philosopher-plato-profession": ("poet",),
    "philosopher-aristotle-profession": ("naturalist", "physicist", "astronomer", "poet"),
    "philosopher-rene-descartes-profession": ("physicist",),
    "philosopher-rene-descartes-country": ("the Netherlands",),
    "philosopher-friedrich-nietzsche-profession": ("poet", "composer"),
    "philosopher-friedrich-nietzsche-country": ("Switzerland",),
    "leader-napoleon-bonaparte-country": ("Italy",),
    "leader-george-washington-country": ("England",),
    "leader-winston-churchill-profession": ("painter", "novelist", "poet"),
    "leader-winston-churchill-country": ("the United States",),
    "leader-cleopatra-country": ("Greece",),
    "leader-genghis-khan-country": ("China",),
    "entertainer-elvis-presley-profession": ("actor",),
    "entertainer-michael-jackson-profession": ("actor",),
    "entertainer-john-lennon-profession": ("actor", "poet", "painter", "composer"),
    "entertainer-bob-marley-profession": ("composer",),
    "entertainer-bob-marley-country": ("England",),
    "entertainer-charlie-chaplin-profession": ("composer",),
    "entertainer-charlie-chaplin-country": ("the United States",),
    "athlete-michael-jordan-sport": ("baseball",),
    "company-nintendo-product": ("toys",),
    "company-lego-product": ("video games",),
    "company-microsoft-founder": ("Paul Allen",),
    "company-apple-founder": ("Steve Wozniak",),
    "company-google-founder": ("Sergey Brin",),
    "company-nokia-product": ("tires", "computers"),
    "animal-dog-young": ("pup",),
    "animal-dog-sound": ("howl",),
    "animal-cat-sound": ("hiss",),
    "animal-wolf-young": ("cub", "puppy"),
    "animal-wolf-sound": ("bark",),
    "animal-seal-young": ("cub", "puppy"),
    "animal-shark-young": ("cub", "puppy"),
    "animal-lion-young": ("pup",),
    "animal-bear-young": ("pup",),
    "animal-deer-young": ("calf",),
    "animal-elephant-young": ("cub",),
    "animal-whale-young": ("cub", "pup"),
    "animal-dolphin-young": ("cub", "pup"),
    "animal-duck-young": ("chick",),
    "animal-goose-young": ("chick",),
    "animal-swan-young": ("chick",),
    "animal-goose-sound": ("hiss",),
    "animal-lion-sound": ("howl",),
    "body-lungs-organ": ("nose",),
    "body-tongue-use": ("chew",),
    "body-legs-use": ("swim",),
    "body-nose-use": ("breathe",),
    "god-athena-domain": ("war",),
    "mountain-k2-range": ("Himalayas",),
    "animal-elephant-sound": ("roar",),
    "sport-polo-equipment": ("stick",),
    "opposite-above-and-below-antonym": ("down", "bottom"),
    "opposite-above-and-below-antonym-reverse": ("up", "top"),
    "opposite-up-and-down-antonym": ("below", "bottom"),
    "opposite-up-and-down-antonym-reverse": ("above", "top"),
    "opposite-top-and-bottom-antonym": ("below", "down"),
    "opposite-top-and-bottom-antonym-reverse": ("above", "up"),
    "opposite-loud-and-quiet-antonym": ("soft",),
    "opposite-hard-and-soft-antonym-reverse": ("loud",),
    "character-spider-man-creator": ("Steve Ditko",),
    "character-batman-creator": ("Bill Finger",),
}
"""Values of the pool that are also true for the item (never drawn as its distractors)."""


# ------------------------------------------------------------------------------------------------ records


def article(phrase: str) -> str:
    vowel = phrase[0].lower() in "aeiou" or phrase.lower().startswith("hour")
    return ("an " if vowel else "a ") + phrase


def capitalise(text: str) -> str:
    return text[0].upper() + text[1:]


def slug(text: str) -> str:
    """Lowercase ASCII words joined by hyphens, a leading "the" dropped: "the Mona Lisa" → ``mona-lisa``."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    text = re.sub(r"^the\s+", "", text)
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def render(template: str, subject: str, fields: Mapping[str, str]) -> str:
    values = {"s": subject, "S": capitalise(subject), "a_s": article(subject), "A_s": capitalise(article(subject))}
    for k, v in fields.items():
        if v:
            values[k.replace("-", "_")] = v
            values["a_" + k.replace("-", "_")] = article(v)
    return template.format(**values)


def facts() -> list[dict]:
    """Every fact of every table, without distractors: id, subject, category, relation, pool, prompts, answer."""
    out = []
    for t in TABLES:
        for subject, fields in t.rows:
            sid = f"{t.category}-{slug(subject)}"
            for rel, r in t.relations.items():
                if fields.get(rel):
                    out.append({"id": f"{sid}-{rel}", "subject_id": sid, "subject": subject, "category": t.category,
                                "relation": rel, "pool": r.pool or rel, "answer": fields[rel],
                                "prompt": render(r.prompt, subject, fields),
                                "paraphrase": render(r.paraphrase, subject, fields)})
    return out


def pools(rows: Sequence[dict]) -> dict[str, list[str]]:
    """Every pool's values: the answers of its relations and its :data:`EXTRA` values, sorted."""
    values: dict[str, set[str]] = defaultdict(set)
    for f in rows:
        values[f["pool"]].add(f["answer"])
    for pool, extra in EXTRA.items():
        values[pool] |= set(extra)
    return {k: sorted(v) for k, v in values.items()}


def distractors(fact: dict, pool: Sequence[str]) -> tuple[str, ...]:
    """Five values of the fact's pool, neither its answer, nor also true for it, nor a word of its prompts ("The
    month after October is" → never " October"), drawn with a fixed seed."""
    said = f"{fact['prompt']} {fact['paraphrase']}".lower()
    candidates = [v for v in pool if v != fact["answer"] and v not in ALSO_TRUE.get(fact["id"], ())
                  and not re.search(rf"\b{re.escape(v.lower())}\b", said)]
    if len(candidates) < N_DISTRACTORS:
        raise SafetyError(f"cloze: pool {fact['pool']!r} has too few false values for {fact['id']}",
                          "add values to EXTRA in llmri/safety/cloze_data.py")
    return tuple(random.Random(f"cloze/{fact['id']}").sample(candidates, N_DISTRACTORS))


def generate() -> list[Cloze]:
    """The published set, sorted by id."""
    rows = facts()
    by_pool = pools(rows)
    out = [Cloze(id=f["id"], subject_id=f["subject_id"], subject=f["subject"], category=f["category"],
                 relation=f["relation"], prompt=f["prompt"], answer=" " + f["answer"], paraphrase=f["paraphrase"],
                 distractors=tuple(" " + d for d in distractors(f, by_pool[f["pool"]]))) for f in rows]
    return sorted(out, key=lambda c: c.id)


def main(argv: Sequence[str] | None = None) -> None:
    import argparse
    from pathlib import Path

    from ..atomic import atomic_path

    ap = argparse.ArgumentParser(prog="python -m llmri.safety.cloze_data", description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help="regenerate llmri/safety/data/cloze.jsonl")
    args = ap.parse_args(argv)
    items = generate()
    if args.write:
        with atomic_path(Path(__file__).parent / "data" / FILE) as tmp:
            tmp.write_text("".join(to_json(c) + "\n" for c in items), encoding="utf-8")
    per_cat: dict[str, int] = defaultdict(int)
    for c in items:
        per_cat[c.category] += 1
    print(json.dumps({"facts": len(items), "subjects": len({c.subject_id for c in items}), "per_category": per_cat}))


if __name__ == "__main__":
    main()
