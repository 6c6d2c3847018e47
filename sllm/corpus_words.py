"""Word lists for the built-in demo corpus (sllm.corpus). Written for sllm; no outside text.

Each list is one space-separated string; multi-word items use an underscore.
"""


def words(text: str) -> list[str]:
    """Split a list string into items, turning underscores into spaces."""
    return [w.replace("_", " ") for w in text.split()]


NAMES = words("""
Anna Ben Clara David Emma Felix Grace Henry Iris Jack Kate Leo Maya Noah Olivia Peter Quinn
Rosa Sam Tina Umar Vera Will Xena Yuri Zoe Alice Bruno Chloe Daniel Elsa Frank Gina Hugo Ivy
Jonas Lena Marco Nina Oscar Paula Ruby Simon Tara Victor Wendy Adam Bella Carl Dora Eric Fiona
George Hannah Isaac Julia Kevin Lucy Max Nora Owen Pia Ray Sara Tom Uma Vincent Lily Mia Theo
Lara Milo Ella Finn Ada Otto Eva Nico Luna Axel Cora Dina Emil Flora Gus Hazel Ines Joel Kira
""")

ANIMALS = words("""
cat dog rabbit fox bear mouse owl duck frog horse pig goat sheep cow deer wolf squirrel
hedgehog turtle lion tiger elephant monkey zebra giraffe penguin seal whale dolphin parrot
crow sparrow swan goose hen chicken donkey camel kangaroo koala panda otter beaver badger
mole lizard snake bee butterfly ant spider snail crab fish puppy kitten lamb pony raccoon
""")

HOMES = words("""
small_house little_cottage big_tree old_barn cozy_den wooden_hut quiet_burrow tall_tower
red_house blue_cabin warm_nest stone_cottage green_tent yellow_house round_hole
""")

LANDMARKS = words("""
river forest lake hill mountain village sea beach meadow garden park bridge castle farm
market school library station harbor field valley pond road mill church square
""")

PLACES = words("""
market park library school beach station museum bakery zoo garden cafe shop hospital office
cinema theater farm river lake forest mountain village city square harbor playground pool
kitchen restaurant gym bank post_office bookshop pharmacy supermarket airport
""")

FOODS = words("""
apple banana orange pear grape cherry lemon peach plum melon strawberry tomato potato carrot
onion cucumber pumpkin cabbage lettuce pepper bean pea corn rice bread cheese butter egg milk
soup salad sandwich pizza pasta noodle cake cookie pie muffin pancake honey jam yogurt
chocolate candy sausage chicken fish nut mushroom berry juice tea coffee water cereal biscuit
""")

OBJECTS = words("""
ball book box key kite hat coat scarf shoe boot sock glove umbrella bag basket bottle cup
plate spoon fork knife bowl pot pan lamp candle clock watch ring necklace map compass rope
ladder bucket shovel hammer brush pencil pen notebook letter card stamp coin wallet phone
camera radio guitar drum flute violin piano bell whistle toy doll puzzle blanket pillow
chair table bed door window mirror picture flag feather shell stone leaf flower seed
bicycle boat wagon sled tent jar candle_holder backpack ticket present
""")

COLORS = words("red blue green yellow orange purple pink brown black white gray golden silver")

ADJECTIVES = words("""
little big small tiny huge old young kind brave clever shy happy sad quiet loud gentle
friendly curious busy lazy funny sleepy hungry thirsty tired strong fast slow bright dark
warm cold soft hard new shiny pretty beautiful strange wonderful lucky careful proud calm
wise silly honest polite noisy smart helpful cheerful lonely grumpy nervous excited
""")

FEELINGS = words("""
happy sad tired excited bored hungry worried glad proud scared surprised calm angry sleepy
fine great good okay busy nervous lonely cheerful thankful relaxed
""")

WEATHER = words("""
sunny rainy cloudy windy snowy foggy warm cold hot cool stormy
""")

DAYS = words("Monday Tuesday Wednesday Thursday Friday Saturday Sunday")
TIMES = words("morning afternoon evening night")
SEASONS = words("spring summer autumn winter")
NUMBERS = words("two three four five six seven eight nine ten eleven twelve")

JOBS = words("""
teacher doctor nurse baker farmer cook driver pilot painter writer singer dancer builder
gardener fisher tailor police_officer firefighter shopkeeper mail_carrier librarian
scientist engineer vet dentist student waiter carpenter musician artist clerk
""")

FAMILY = words("""
mother father sister brother grandmother grandfather aunt uncle cousin friend neighbor
""")

# (base form, past tense, -ing form) for activities one can "like to" do.
ACTIVITIES = [tuple(a.replace("_", " ").split("|")) for a in """
read_books|read_books|reading_books play_football|played_football|playing_football
swim|swam|swimming paint_pictures|painted_pictures|painting_pictures
sing_songs|sang_songs|singing_songs dance|danced|dancing cook_dinner|cooked_dinner|cooking_dinner
bake_bread|baked_bread|baking_bread ride_a_bike|rode_a_bike|riding_a_bike
climb_trees|climbed_trees|climbing_trees fly_a_kite|flew_a_kite|flying_a_kite
go_fishing|went_fishing|going_fishing take_photos|took_photos|taking_photos
write_stories|wrote_stories|writing_stories play_chess|played_chess|playing_chess
grow_flowers|grew_flowers|growing_flowers watch_the_stars|watched_the_stars|watching_the_stars
play_the_piano|played_the_piano|playing_the_piano go_hiking|went_hiking|going_hiking
collect_shells|collected_shells|collecting_shells build_sandcastles|built_sandcastles|building_sandcastles
draw_maps|drew_maps|drawing_maps learn_new_words|learned_new_words|learning_new_words
go_running|went_running|going_running play_cards|played_cards|playing_cards
knit_scarves|knitted_scarves|knitting_scarves feed_the_birds|fed_the_birds|feeding_the_birds
""".split()]

# (base, past) verbs for small story events with an object.
ACTIONS = [tuple(a.split("|")) for a in """
find|found lose|lost carry|carried open|opened clean|cleaned fix|fixed paint|painted
build|built hide|hid share|shared wash|washed buy|bought sell|sold bring|brought make|made
drop|dropped hold|held keep|kept give|gave take|took catch|caught throw|threw pack|packed
""".split()]

MOVES = [tuple(a.split("|")) for a in """
walk|walked run|ran hop|hopped jump|jumped swim|swam fly|flew climb|climbed skip|skipped
wander|wandered hurry|hurried march|marched crawl|crawled dash|dashed stroll|strolled
""".split()]

SOUNDS = words("""
a_loud_noise a_soft_song a_strange_sound a_small_cry a_happy_laugh a_quiet_knock
a_long_whistle a_sad_sigh
""")

IRREGULAR_PLURALS = {
    "mouse": "mice", "sheep": "sheep", "deer": "deer", "fish": "fish", "goose": "geese",
    "knife": "knives", "leaf": "leaves", "wolf": "wolves", "shelf": "shelves",
    "child": "children", "person": "people", "potato": "potatoes", "tomato": "tomatoes",
    "rice": "rice", "bread": "bread", "cheese": "cheese", "butter": "butter",
    "milk": "milk", "honey": "honey", "jam": "jam", "yogurt": "yogurt", "water": "water",
    "juice": "juice", "tea": "tea", "coffee": "coffee", "chocolate": "chocolate",
    "candy": "candy", "corn": "corn", "soup": "soup", "pasta": "pasta", "cereal": "cereal",
    "lettuce": "lettuce", "cabbage": "cabbages", "pizza": "pizzas", "foot": "feet",
    "tooth": "teeth", "cocoa": "cocoa", "lemonade": "lemonade", "porridge": "porridge",
    "garlic": "garlic", "spinach": "spinach", "ginger": "ginger", "sushi": "sushi",
    "curry": "curry", "custard": "custard", "barley": "barley", "celery": "celery",
    "mango": "mangoes", "cactus": "cacti",
}


def plural(noun: str) -> str:
    """English plural of a noun (the last word of a phrase)."""
    head, _, last = noun.rpartition(" ")
    if last in IRREGULAR_PLURALS:
        word = IRREGULAR_PLURALS[last]
    elif last.endswith(("s", "x", "ch", "sh")):
        word = last + "es"
    elif last.endswith("y") and last[-2:-1] not in "aeiou":
        word = last[:-1] + "ies"
    else:
        word = last + "s"
    return f"{head} {word}" if head else word


def article(noun: str) -> str:
    """'a' or 'an' for a noun phrase."""
    return "an" if noun[:1].lower() in "aeiou" else "a"

# ---- more words, used by the school, hobby, health, clothes and garden templates ----------
FOODS += words("""
avocado apricot blueberry coconut fig kiwi lime mango papaya pineapple raspberry watermelon
broccoli cauliflower celery garlic ginger spinach radish beet zucchini eggplant olive
almond peanut walnut oat barley bagel croissant dumpling omelet burger taco sushi curry
stew porridge toast waffle donut pudding custard sorbet lemonade smoothie cocoa
""")
ANIMALS += words("""
beetle cricket dragonfly ladybug moth worm octopus shark starfish jellyfish eagle hawk
pigeon robin peacock flamingo pelican stork heron gorilla leopard cheetah hippo rhino
buffalo moose bat hamster ferret chipmunk walrus puffin toad newt salamander
""")
OBJECTS += words("""
hammock lantern kettle teapot toaster oven fridge sofa cushion carpet curtain shelf
drawer cupboard vase bench fence gate mailbox envelope parcel calendar diary
magnet marble button ribbon thread needle scissors glue tape ruler eraser crayon
paintbrush easel globe telescope microscope binoculars flashlight battery helmet
skateboard scooter surfboard racket trophy medal crown wand mask costume puppet
""")
PLACES += words("""
bus_stop train_station gas_station bakery_corner flower_shop toy_shop shoe_shop barber_shop
swimming_pool ice_rink football_field tennis_court concert_hall art_gallery aquarium
campsite lighthouse windmill orchard vineyard greenhouse stadium
""")
ADJECTIVES += words("""
gentle fierce fluffy tiny enormous ancient modern cozy chilly sunny muddy dusty sparkly
smooth rough sticky crunchy juicy sweet sour salty bitter spicy fresh rotten ripe
colorful plain fancy simple tidy messy clean dirty empty full heavy light narrow wide
deep shallow tall short long round square sharp dull loyal patient generous clumsy
graceful daring timid jolly gloomy eager fearless playful thoughtful stubborn
""")
JOBS += words("""
astronaut sailor mechanic plumber electrician architect photographer journalist judge
lawyer banker barber chef potter beekeeper shepherd ranger lifeguard zookeeper
""")

SUBJECTS = words("""
math science history geography music art reading writing spelling biology chemistry
physics drawing dancing cooking computing languages
""")
SPORTS = words("""
football basketball tennis volleyball baseball hockey swimming running cycling skiing
skating climbing rowing sailing boxing karate yoga golf badminton
""")
INSTRUMENTS = words("""
piano guitar violin flute drum trumpet cello harp clarinet saxophone trombone ukulele
accordion harmonica banjo
""")
CLOTHES = words("""
shirt sweater jacket dress skirt jeans shorts trousers pajamas raincoat cap beanie
sandal sneaker slipper belt tie vest apron uniform
""")
BODY = words("""
head arm leg knee elbow foot hand finger toe ear eye nose mouth tooth throat back
shoulder stomach neck wrist ankle
""")
AILMENTS = words("""
a_cold a_cough a_headache a_fever a_sore_throat a_toothache a_stomachache a_runny_nose
""")
PLANTS = words("""
rose tulip daisy sunflower lily violet poppy orchid lavender daffodil cactus fern
oak maple pine birch willow apple_tree cherry_tree palm bamboo ivy clover mint basil
""")
TOWNS = words("""
Brookfield Millbrook Stonebridge Oakvale Riverton Maplewood Pinehill Fairhaven Greenwich
Ashford Willowby Redcliff Lakeside Sunnydale Westport Northgate Eastwood Southby
""")
MONTHS = words("""
January February March April May June July August September October November December
""")
