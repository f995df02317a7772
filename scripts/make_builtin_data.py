"""Write the built-in data sets shipped in the package (deterministic; re-running gives identical files).

    python scripts/make_builtin_data.py          # writes src/grpo_ao/resources/builtin_{train,eval}.jsonl

All sentences below were written for this project. Training texts, two kinds:
- 1-3 sentences on one of ten topics with a clear sentiment, in English, French, Spanish or German, each
  with yes/no questions (topic, sentiment, language; Yes/No balanced) and open questions (topic,
  sentiment, language);
- one English sentence labelled with one of tense (past/present/future), number of the grammatical
  subject (singular/plural) or fact (a true/false world-knowledge statement), each with one yes/no
  question in the eval set's wording (Yes/No balanced per question) and one open question answered by
  the label (appended after the first kind, with their own random generator).
Eval texts are separate sentences (none equals, contains or is contained in a training text; checked on
every build), one row per text, yes/no questions only, in six task families: topic, sentiment, language,
tense, number, fact. A question never contains its answer. Training fact statements are not the eval's
statements nor their negations.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SEED = 0
FAMILY_SEED = 1  # the tense/number/fact training rows' own generator (see build_all)
OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "grpo_ao" / "resources"
TOPICS = ("cooking", "sports", "programming", "weather", "music", "medicine", "finance", "travel", "animals", "space")
TOPIC_PHRASE = {t: t for t in TOPICS} | {"weather": "the weather"}
LANGUAGES = ("English", "French", "Spanish", "German")

# --- training material: TRAIN_EN[topic] = (positive sentences, negative sentences) -----------------------
TRAIN_EN = {
    "cooking": ((
        "The lemon risotto turned out creamy and rich, and everyone at the table asked for a second helping.",
        "Baking fresh bread at home is a joy, and the smell of the warm crust fills the whole kitchen.",
        "This garlic and ginger stir-fry is quick to make and tastes wonderful.",
        "The chef's tomato soup was perfectly seasoned and wonderfully comforting on a cold evening.",
        "I loved how the slow-roasted vegetables caramelised in the oven; the recipe is a keeper.",
        "Our homemade dumplings came out tender and juicy, the best we have ever cooked.",
    ), (
        "The pasta was overcooked and mushy, and the sauce tasted of nothing but salt.",
        "I burnt the onions again and the whole stew ended up bitter and inedible.",
        "The cake collapsed in the oven and came out dense, dry and disappointing.",
        "This recipe is a mess: the quantities are wrong and the dough never rises.",
        "The fried rice was greasy and cold, and the chicken in it was tough as leather.",
        "Cooking dinner tonight was a disaster; the fish stuck to the pan and fell apart.",
    )),
    "sports": ((
        "Our team won the final in the last minute with a stunning header, and the fans went wild.",
        "She ran her fastest marathon ever and finished with a huge smile on her face.",
        "The tennis match was thrilling, with brilliant rallies from both players.",
        "Joining the local swimming club was a great decision; training with the squad is fun and motivating.",
        "The young goalkeeper made three superb saves and was named player of the match.",
        "What a fantastic season for the basketball team, who went unbeaten at home.",
    ), (
        "The team played terribly and lost the derby five nil in front of their own fans.",
        "He tore a ligament in the first half and will miss the rest of the football season.",
        "The referee's awful decisions ruined what should have been an exciting rugby match.",
        "Our cycling race was miserable: I crashed on the first descent and never caught the pack.",
        "The coach's tactics were a failure, and the players looked slow and tired all game.",
        "Ticket prices at the stadium are outrageous and the seats give a dreadful view of the pitch.",
    )),
    "programming": ((
        "The new release of the compiler is much faster, and the error messages are finally clear and helpful.",
        "I refactored the messy module into small functions, and now every unit test passes.",
        "Writing this web server in Python was a pleasure thanks to the excellent library documentation.",
        "The code review was friendly and useful, and my pull request was merged the same day.",
        "Our new database query runs in milliseconds instead of minutes, a brilliant improvement.",
        "Learning to use a debugger properly made finding bugs in my programs so much easier.",
    ), (
        "The build keeps failing with a cryptic linker error, and nobody on the team can fix it.",
        "This API is badly documented, and half of its functions crash when given an empty list.",
        "A memory leak in the server code brought down production twice this week.",
        "The legacy codebase is a nightmare of global variables and copy-pasted functions.",
        "After the update, the app freezes on startup and the log files show nothing useful.",
        "Merging the two branches was painful, with hundreds of conflicts in the source files.",
    )),
    "weather": ((
        "The morning was sunny and mild, with a gentle breeze and a clear blue sky.",
        "After weeks of drought, the soft spring rain was a welcome relief for the gardens.",
        "It was a beautiful, warm afternoon, perfect weather for a walk by the lake.",
        "Fresh snow fell overnight and the crisp, bright winter morning looked magical.",
        "The forecast promises a lovely weekend of sunshine and comfortable temperatures.",
        "A light, cool wind made the summer heat pleasant and easy to enjoy.",
    ), (
        "A violent storm tore through the town, flooding streets and knocking down power lines.",
        "The heatwave was unbearable, with temperatures above forty degrees for a whole week.",
        "It has rained without a break for ten days, and the grey sky is depressing.",
        "Thick fog and icy roads made the morning commute dangerous and miserable.",
        "The hailstorm ruined the crops and smashed the windows of several cars.",
        "A bitter, freezing wind blew all day and the sleet soaked everyone to the bone.",
    )),
    "music": ((
        "The orchestra gave a breathtaking performance of the symphony, and the audience cheered for ten minutes.",
        "Her new album is full of catchy melodies and beautiful harmonies.",
        "Learning to play the guitar has brought me so much happiness this year.",
        "The jazz trio's improvisation was inventive, playful and a delight to hear.",
        "The choir sang with such warmth that the concert hall felt full of light.",
        "This band's live show was energetic and joyful from the first song to the encore.",
    ), (
        "The concert was a letdown: the sound was muddy and the singer was badly out of tune.",
        "Their latest record is dull and repetitive, with lyrics that feel lazy.",
        "The piano was so out of tune that the recital was painful to sit through.",
        "The festival's sound system kept cutting out, spoiling every set.",
        "I practised the violin for hours, but my playing still sounds screechy and awful.",
        "The band arrived two hours late and played a short, sloppy set.",
    )),
    "medicine": ((
        "The new treatment worked remarkably well, and most patients recovered within a week.",
        "The nurses on the ward were kind and attentive, and my recovery after surgery went smoothly.",
        "Thanks to the vaccine, cases of the disease have dropped dramatically in the region.",
        "My doctor explained the diagnosis clearly and the medication has eased my symptoms.",
        "The clinical trial showed the drug is safe and greatly reduces the risk of heart attacks.",
        "The hospital's new scanner gives fast, accurate results and has shortened waiting lists.",
    ), (
        "The side effects of the medication were severe, with constant nausea and dizziness.",
        "The hospital was understaffed and patients waited twelve hours in the emergency room.",
        "The surgery led to a serious infection, and his recovery has been slow and painful.",
        "The clinical trial was stopped because the drug caused liver damage in several patients.",
        "My doctor dismissed my symptoms, and the illness was diagnosed far too late.",
        "The antibiotics did nothing for the infection, and the fever kept getting worse.",
    )),
    "finance": ((
        "The company's profits rose sharply this quarter, and its shares hit a record high.",
        "Our savings account finally earns decent interest, and the retirement fund is growing nicely.",
        "Investors were delighted as the stock market rallied strongly after the announcement.",
        "Paying off the mortgage early has saved us a great deal of money in interest.",
        "The small business secured a generous loan and its revenue doubled within a year.",
        "The bank's new budgeting app makes tracking expenses simple and even enjoyable.",
    ), (
        "The stock market crashed, wiping out years of savings for many families.",
        "The firm reported heavy losses and announced it would cut thousands of jobs.",
        "Rising interest rates have made our mortgage payments painfully expensive.",
        "The bank charged hidden fees and froze my account without any explanation.",
        "Inflation is eating away at wages, and household debt keeps climbing.",
        "The investment fund collapsed after the manager was caught falsifying the accounts.",
    )),
    "travel": ((
        "Our trip along the coast was wonderful, with charming villages and stunning views at every stop.",
        "The train journey through the mountains was relaxing and the scenery was spectacular.",
        "The hotel staff were welcoming, and our room looked out over the old harbour.",
        "Backpacking across the islands was the adventure of a lifetime.",
        "The flight was smooth and on time, and the crew were friendly and helpful.",
        "Exploring the ancient city on foot was fascinating, and the local guide was excellent.",
    ), (
        "Our flight was cancelled, and we spent the night sleeping on the airport floor.",
        "The hotel room was filthy, noisy and nothing like the photos on the booking site.",
        "The airline lost our luggage, and we spent the first three days of the holiday without clothes.",
        "The bus broke down in the middle of nowhere and the tour company never apologised.",
        "The resort was overcrowded and overpriced, and the beach was covered in rubbish.",
        "Our passports were stolen at the station, which turned the trip into a nightmare.",
    )),
    "animals": ((
        "The rescued puppy is playful and affectionate, and she already loves her new family.",
        "We watched a family of otters playing in the river, and it was the highlight of our day.",
        "The elephants at the sanctuary are healthy and happy, roaming freely across the grassland.",
        "My cat curls up on my lap every evening, purring contentedly.",
        "Volunteers helped hundreds of sea turtle hatchlings reach the ocean safely.",
        "The parrot learned to say good morning and greets everyone cheerfully.",
    ), (
        "The stray dog was starving and limping, and nobody had cared for it in weeks.",
        "Poachers killed three rhinos in the reserve last month, a terrible loss.",
        "The zoo's cages were cramped and dirty, and the animals looked miserable.",
        "Our horse fell ill with colic and spent a painful night in the stable.",
        "Pollution in the bay has poisoned the fish, and many seabirds have died.",
        "The neighbour's dog barks aggressively at everyone and bit the postman.",
    )),
    "space": ((
        "The rocket launch was a complete success, and the satellite reached its orbit perfectly.",
        "The new telescope captured stunning images of distant galaxies.",
        "Astronauts on the space station completed a flawless spacewalk to repair the solar panels.",
        "The rover landed safely on Mars and is already sending back exciting data.",
        "Watching the meteor shower on a clear night was an unforgettable experience.",
        "The mission discovered water ice on the Moon, great news for future explorers.",
    ), (
        "The rocket exploded seconds after liftoff, destroying the expensive satellite it carried.",
        "The probe lost contact with mission control and is now drifting uselessly through space.",
        "Budget cuts have cancelled the planned mission to Jupiter's moons.",
        "The lunar lander crashed into the surface after its engine failed.",
        "A cloud of space debris damaged the station and forced the crew to shelter.",
        "The telescope's mirror was flawed, and its first images of the stars were blurry and useless.",
    )),
}

# (language, topic, sentiment, sentence)
TRAIN_OTHER = [
    ("French", "cooking", "positive", "La soupe de légumes était délicieuse et toute la famille en a redemandé."),
    ("French", "travel", "positive", "Notre voyage en Provence était merveilleux, avec des villages magnifiques et un soleil radieux."),
    ("French", "music", "positive", "Le concert de piano était superbe et le public a applaudi longtemps."),
    ("French", "animals", "positive", "Le petit chat est très affectueux et joue toute la journée avec les enfants."),
    ("French", "sports", "positive", "L'équipe a gagné le match grâce à un but magnifique à la dernière minute."),
    ("French", "weather", "positive", "Il fait beau et doux ce matin, le ciel est parfaitement bleu."),
    ("French", "medicine", "negative", "Les effets secondaires du médicament sont terribles et je me sens très mal."),
    ("French", "finance", "negative", "La banque a perdu beaucoup d'argent et des milliers d'employés vont perdre leur travail."),
    ("French", "programming", "negative", "Le programme plante à chaque démarrage et personne ne comprend l'erreur."),
    ("French", "weather", "negative", "La tempête a détruit les toits et inondé toutes les rues du village."),
    ("French", "travel", "negative", "Le train avait trois heures de retard et l'hôtel était sale et bruyant."),
    ("French", "space", "negative", "La fusée a explosé au décollage et la mission est un échec complet."),
    ("Spanish", "cooking", "positive", "La paella estaba riquísima y todos los invitados quedaron encantados."),
    ("Spanish", "sports", "positive", "Nuestro equipo jugó un partido fantástico y ganó el campeonato."),
    ("Spanish", "space", "positive", "El lanzamiento del cohete fue un éxito y el satélite ya está en órbita."),
    ("Spanish", "music", "positive", "La canción nueva es preciosa y la banda tocó con mucha alegría."),
    ("Spanish", "medicine", "positive", "El nuevo tratamiento funciona muy bien y los pacientes se recuperan rápido."),
    ("Spanish", "animals", "positive", "El perro rescatado es muy cariñoso y ahora vive feliz con su nueva familia."),
    ("Spanish", "travel", "negative", "El vuelo fue cancelado y pasamos toda la noche en el aeropuerto."),
    ("Spanish", "weather", "negative", "Hace un frío horrible y la lluvia no ha parado en toda la semana."),
    ("Spanish", "finance", "negative", "La bolsa se desplomó y muchas familias perdieron sus ahorros."),
    ("Spanish", "programming", "negative", "El código está lleno de errores y la aplicación se bloquea constantemente."),
    ("Spanish", "cooking", "negative", "La carne estaba quemada y la salsa no tenía ningún sabor."),
    ("Spanish", "sports", "negative", "El equipo perdió otra vez y los aficionados abandonaron el estadio enfadados."),
    ("German", "music", "positive", "Das Konzert war wunderbar und das Orchester spielte mit großer Leidenschaft."),
    ("German", "travel", "positive", "Die Reise an die Ostsee war herrlich und das Hotel war sehr gemütlich."),
    ("German", "programming", "positive", "Das neue Programm läuft schnell und stabil, und alle Tests sind erfolgreich."),
    ("German", "finance", "positive", "Die Firma hat einen Rekordgewinn erzielt und die Aktie ist stark gestiegen."),
    ("German", "weather", "positive", "Heute scheint die Sonne, und es ist angenehm warm im Park."),
    ("German", "cooking", "positive", "Der Apfelkuchen war saftig und köstlich, genau wie bei meiner Großmutter."),
    ("German", "animals", "negative", "Der Hund wurde im Tierheim vernachlässigt und ist sehr krank."),
    ("German", "medicine", "negative", "Die Operation ist schiefgegangen und der Patient hat starke Schmerzen."),
    ("German", "sports", "negative", "Die Mannschaft hat schlecht gespielt und das Spiel klar verloren."),
    ("German", "space", "negative", "Die Raumsonde ist abgestürzt und die ganze Mission war umsonst."),
    ("German", "travel", "negative", "Der Zug ist ausgefallen und wir saßen stundenlang am kalten Bahnhof fest."),
    ("German", "music", "negative", "Die Band spielte furchtbar laut und der Sänger traf keinen einzigen Ton."),
]

# --- training material for the grammar and fact families (one sentence per text; none near an eval sentence)
# Tense texts mix singular and plural subjects; number texts mix past, present and future verbs, so neither
# label can be read off the other.
TRAIN_TENSE = {
    "past": (
        "The fishermen mended their nets on the quay before dawn.",
        "My aunt knitted a scarf for every grandchild last winter.",
        "The volcano erupted without warning and buried the village in ash.",
        "We missed the last bus and walked home in the rain.",
        "The detective found the missing letter inside an old atlas.",
        "A storm knocked the chimney off the roof two nights ago.",
        "The pilots landed the damaged plane safely in a field.",
        "I baked a plum cake for my sister's birthday.",
        "The workers painted the factory walls over the weekend.",
        "Our team lost the match by a single point.",
        "The king signed the treaty in the great hall.",
        "She wrote three novels before she turned thirty.",
        "The villagers celebrated the harvest with music and dancing.",
        "He forgot his umbrella on the tram this morning.",
        "The explorers crossed the frozen lake on foot.",
        "The puppy chewed through the garden hose.",
        "Last summer the stream dried up completely.",
        "The twins learned to swim at the age of four.",
        "The company hired forty new clerks in March.",
        "My parents met at a dance in 1975.",
        "The guests left the party shortly after midnight.",
        "A young artist painted the mural on the station wall.",
        "Heavy snow closed the mountain pass for a week.",
        "We stayed at a small inn beside the canal.",
        "The professor cancelled the lecture because of the strike.",
        "The kittens slept in a basket by the stove.",
        "Thieves stole a famous painting from the gallery in 1911.",
        "The mayor opened the new swimming pool with a short speech.",
        "I lost my keys somewhere in the park.",
        "The soldiers marched through the square at noon.",
        "The chef burned the sauce and started again.",
        "The old printer jammed on the very first page.",
        "The audience laughed at every joke in the play.",
        "Our cousins sold their house and moved abroad.",
        "The ship sank in a gale off the northern coast.",
        "He cycled across the whole country in a month.",
        "The gardeners planted tulips along the path in October.",
        "She won the chess tournament at the age of twelve.",
        "The wind scattered the dry leaves across the lawn.",
        "The builders finished the tunnel two years late.",
    ),
    "present": (
        "My aunt knits warm socks for the whole family.",
        "The factory produces ten thousand bottles a day.",
        "Most owls hunt at night.",
        "The tram to the stadium stops outside our house.",
        "She writes a short poem every evening.",
        "The volcano sends up a thin column of smoke.",
        "We eat dinner together on Sundays.",
        "The tour guide knows every street in the old town.",
        "The twins share a bedroom at the top of the stairs.",
        "The beacon on the hill flashes every ten seconds.",
        "My uncle drives a taxi in the city.",
        "Bread dough rises faster in a warm kitchen.",
        "The pupils wear green uniforms at this school.",
        "The lake freezes over most winters.",
        "Our dentist works only on weekday mornings.",
        "The puppies sleep in a box by the fire.",
        "The shop sells fresh fish on Fridays.",
        "He plays the trumpet in a brass band.",
        "The clock in the kitchen runs five minutes fast.",
        "The night market attracts large crowds every weekend.",
        "The mountains look blue in the evening light.",
        "I drink a cup of green tea before work.",
        "The hospital needs more volunteers at night.",
        "The kids ride their scooters to school.",
        "The company employs about two hundred people.",
        "The ferry crosses the strait twice a day.",
        "My grandmother grows roses in front of her cottage.",
        "The pilots check the weather before every flight.",
        "The fountain in the square sprays water high into the air.",
        "Our librarian reads the little ones a story on Friday afternoons.",
        "The wasps buzz around the fallen plums.",
        "The choir rehearses in the church hall on Tuesdays.",
        "She keeps her savings in a tin under the bed.",
        "These boots leak whenever it rains.",
        "The baby cries when the doorbell rings.",
        "The soup is too hot to eat.",
        "The road winds through the hills to the coast.",
        "They own a small vineyard in the valley.",
        "The kettle is boiling on the stove.",
        "I am reading a long book about the history of ships.",
    ),
    "future": (
        "The fishermen will sail out before sunrise tomorrow.",
        "My aunt will knit a blanket for the new baby.",
        "The city will build a tram line to the airport.",
        "We will paint the kitchen yellow next weekend.",
        "The concert will start at eight o'clock.",
        "The twins will turn ten in December.",
        "The company will hire more staff next year.",
        "I will bake the bread early in the morning.",
        "The agency will launch its weather satellite in June.",
        "The festival will take place in the old harbour.",
        "Tomorrow the wind will bring colder air from the north.",
        "He will finish the report before Friday.",
        "The guests will arrive at the station at noon.",
        "The new school will open its doors in September.",
        "Our choir will sing at the wedding.",
        "The workers will replace the broken windows on Tuesday.",
        "She will visit her grandparents during the holidays.",
        "The stream will flood the meadow if the storm lasts another day.",
        "The shop will close early on Christmas Eve.",
        "They will repaint the yacht before the summer.",
        "The dentist will see you in ten minutes.",
        "Next month the band will tour three countries.",
        "I will send you the photos tonight.",
        "The villagers will harvest the grapes in September.",
        "The town will celebrate its anniversary with fireworks.",
        "The kittens will be ready for new homes in six weeks.",
        "The airline will add a direct flight to Lisbon.",
        "We will meet outside the cinema at seven.",
        "The pupils will plant sunflowers in the school garden.",
        "The storm will reach the coast by midnight.",
        "My father will drive us to the airport.",
        "The judges will announce the winner after the final round.",
        "The price of tickets will rise in the spring.",
        "You will need a warm coat in the mountains.",
        "The builders will finish the roof by the end of the week.",
        "The club will play its next match away from home.",
        "Our ferry will leave from the main pier at dawn.",
        "The apprentices will present their projects on Thursday.",
        "She will learn to drive this summer.",
        "The old theatre will reopen after the repairs.",
    ),
}
TRAIN_NUMBER = {
    "singular": (
        "The pilot checks the instruments before takeoff.",
        "A tall man waited at the corner for an hour.",
        "The little girl feeds the ducks at the pond.",
        "My sister collects old postcards from the seaside.",
        "The carpenter will build new cupboards for the kitchen.",
        "An owl hoots in the barn every night.",
        "The lawyer reads each contract twice.",
        "A single candle lit the narrow room.",
        "The mechanic will fix the brakes on Monday.",
        "The captain steers the ship through the storm.",
        "The old woman sells apples at the market.",
        "A butterfly landed on the windowsill of the kitchen.",
        "The gardener trims the hedges every spring.",
        "My grandfather tells stories about his years at sea.",
        "The rabbit hid under the bush.",
        "The waiter brings the menus to the table.",
        "The boy kicked the ball against the wall.",
        "A police officer directs the traffic at the crossroads.",
        "The kettle whistled on the stove.",
        "The judge listened to both witnesses.",
        "The author will sign copies of her book after the talk.",
        "The cook stirs the soup with a wooden spoon.",
        "A lonely sailor rowed towards the island.",
        "The mouse ran along the skirting board.",
        "My friend plays the drums in a rock band.",
        "The president gave a short speech.",
        "The plumber will repair the leaking pipes tomorrow.",
        "The prince rides through the city in a golden coach.",
        "An eagle circles high above the valley.",
        "The courier delivered three parcels to the flats.",
        "The baby sleeps in a cot beside the bed.",
        "The painter mixes the colours on a wooden board.",
        "The girl in the red coat is waiting for her mother.",
        "The tailor sewed new buttons onto the jackets.",
        "A hedgehog wanders across the lawn at night.",
        "The librarian stamps the books at the desk.",
        "The referee blew the whistle at the end of the game.",
        "The clown juggles five oranges at once.",
        "The hiker will reach the summit before noon.",
        "My uncle keeps three goats on his farm.",
        "The pianist practises the same piece for hours.",
        "The shopkeeper counted the coins at closing time.",
        "A frog jumps into the pond.",
        "The actor forgot his lines on the first night.",
        "The firefighter climbs the ladder to the roof.",
        "The queen welcomed the visitors to the palace.",
        "The cow grazes in the field by the stream.",
        "The guard will stand at the gate all night.",
        "The photographer takes pictures of the guests.",
        "The squirrel buries nuts under the beech.",
        "My colleague answers the phone in three languages.",
        "The goalkeeper caught the ball with one hand.",
        "A stranger knocked at the door after midnight.",
        "The woman across the street walks her two spaniels at dawn.",
        "The fisherman pulls his nets out of the water.",
        "The poet will read his new poems aloud.",
        "The surgeon washes her hands before the operation.",
        "The parrot repeats every word it hears.",
        "The professor answered questions after the lecture.",
        "My left foot aches after the long walk.",
    ),
    "plural": (
        "The pilots check the instruments before takeoff.",
        "Two tall men waited at the corner for an hour.",
        "The little girls feed the ducks at the pond.",
        "My sisters collect old coins.",
        "The carpenters will build a new roof for the barn.",
        "Owls hoot in the woods every night.",
        "The lawyers argue about every detail of the contract.",
        "Hundreds of candles lit the cathedral.",
        "The mechanics will repair the engine on Monday.",
        "The sailors raise the sails at dawn.",
        "The old women sit on a bench in the sun.",
        "Butterflies gathered on the flowering bushes.",
        "The gardeners rake the leaves into piles.",
        "My grandparents live in a cottage by the sea.",
        "The rabbits dug burrows under the hedge.",
        "The waiters carry trays of drinks through the crowd.",
        "The boys played football in the street.",
        "Police officers guard the entrance to the embassy.",
        "The pots on the stove bubbled quietly.",
        "The judges listened carefully to the final song.",
        "The authors will sign copies of their books after the talk.",
        "The cooks chop onions in the busy kitchen.",
        "Three sailors rowed towards the island.",
        "Mice ran along the skirting board.",
        "My friends play cards every Thursday night.",
        "The ministers gave a joint statement to the press.",
        "The plumbers will fix the pipes tomorrow.",
        "The knights ride through the forest.",
        "Eagles circle high above the valley.",
        "The couriers delivered the parcels before lunch.",
        "The babies sleep in the nursery.",
        "The painters cover the walls with white paint.",
        "The girls in the red coats are waiting at the corner.",
        "The tailors measured the customer for a suit.",
        "Hedgehogs wander across the lawn at night.",
        "The volunteers sort the donated books.",
        "The players shook hands at the end of the game.",
        "The clowns juggle oranges in the ring.",
        "The hikers will reach the summit before noon.",
        "My uncles keep goats on their farms.",
        "The musicians tune their instruments before the show.",
        "The shopkeepers closed their shutters at dusk.",
        "Frogs croak loudly in the pond at night.",
        "The actors bowed to the audience.",
        "The firefighters climb the ladders to the roof.",
        "The guests admired the view from the terrace.",
        "The cows graze in the field by the stream.",
        "The guards will stand at the gate all night.",
        "The photographers crowd around the film star.",
        "Squirrels bury nuts in the autumn.",
        "My colleagues eat lunch in the park.",
        "The fans cheered for the team.",
        "Two strangers knocked at the door after midnight.",
        "The women across the street walk their spaniel at dawn.",
        "The fishermen pull their nets out of the water.",
        "The poets will read their poems aloud.",
        "The surgeons wash their hands before the operation.",
        "The people in the queue grow impatient.",
        "The oxen pulled the heavy cart up the hill.",
        "My feet ache after the long walk.",
    ),
}
TRAIN_FACT = {
    "true": (
        "The Taj Mahal is in India.",
        "Sushi is a traditional Japanese dish.",
        "Koalas eat eucalyptus leaves.",
        "Canada is one of the largest countries in the world.",
        "The pyramids of Giza are in Egypt.",
        "Spring comes after winter.",
        "The Colosseum is in Rome.",
        "Lions eat meat.",
        "Mushrooms are fungi.",
        "Chess is played on a board of sixty-four squares.",
        "An octopus lives in the sea.",
        "Mars is often called the red planet.",
        "Jupiter is the largest planet in the solar system.",
        "Mercury is the planet closest to the Sun.",
        "The Amazon river flows through South America.",
        "Antarctica is the coldest continent.",
        "Gold is a metal.",
        "Fire needs oxygen to burn.",
        "Sharks are fish.",
        "Frogs are amphibians.",
        "Saturn is surrounded by rings of ice and rock.",
        "Humans need water to survive.",
        "Hydrogen is the lightest chemical element.",
        "Lemons taste sour.",
        "Salt dissolves in water.",
        "Rain falls from clouds.",
        "Kangaroos live in Australia.",
        "The Great Wall is in China.",
        "Giraffes have very long necks.",
        "Elephants are the largest land animals.",
        "Tomatoes grow on plants.",
        "Mozart was a composer.",
        "Two plus two equals four.",
        "Ten is an even number.",
        "Seven is a prime number.",
        "Shakespeare wrote Hamlet.",
        "The Statue of Liberty stands in New York.",
        "The brain is protected by the skull.",
        "Teeth are covered in hard enamel.",
        "Ripe bananas are usually yellow.",
        "Copper conducts electricity.",
        "Dry wood floats on water.",
        "Caterpillars turn into butterflies.",
        "Cheese is made from milk.",
        "Camels can survive a long time without drinking.",
        "Switzerland has no coastline.",
        "The Netherlands is a very flat country.",
        "The Thames flows through London.",
        "Venice is famous for its canals.",
        "Glass is made mainly from sand.",
        "Most owls are active at night.",
        "A kilometre is one thousand metres.",
        "Oak trees grow from acorns.",
        "Snakes shed their skin.",
        "Tigers have striped fur.",
        "The Sun is a star.",
        "Violins have strings.",
        "Coffee is made from roasted beans.",
        "Gravity pulls objects towards the ground.",
        "A compass needle points north.",
    ),
    "false": (
        "The Taj Mahal is in Norway.",
        "Sushi is traditionally made with chocolate and cream.",
        "Koalas eat mainly fish.",
        "Canada is smaller than Luxembourg.",
        "The pyramids of Giza are in Finland.",
        "Summer comes straight after winter.",
        "The Colosseum is in Iceland.",
        "Lions eat only grass.",
        "Mushrooms are small animals with legs.",
        "Chess is played with a ball and a net.",
        "An octopus lives in the desert.",
        "Mars is the planet closest to the Sun.",
        "Jupiter is the smallest planet in the solar system.",
        "Saturn is the planet closest to the Sun.",
        "The Amazon river flows through Canada.",
        "Antarctica is the hottest continent.",
        "Gold is a gas at room temperature.",
        "Fire burns best without any oxygen.",
        "Sharks are birds that nest in trees.",
        "Frogs are covered in thick fur.",
        "Humans can live for years without water.",
        "Hydrogen is the heaviest chemical element.",
        "Lemons taste very sweet.",
        "Salt cannot dissolve in water.",
        "Rain falls upwards from the ground.",
        "Kangaroos are native to Greenland.",
        "The Great Wall is in Mexico.",
        "Giraffes have very short necks.",
        "Mice are the largest land animals.",
        "Carrots grow on tall trees.",
        "Mozart was a famous footballer.",
        "Two plus two equals seven.",
        "Nine is an even number.",
        "Eight is a prime number.",
        "Shakespeare wrote the first computer program.",
        "The Statue of Liberty stands in Tokyo.",
        "The brain sits inside the knee.",
        "Human teeth are made of soft wool.",
        "Bananas grow underground like potatoes.",
        "Copper is a type of wood.",
        "Wood is a liquid at room temperature.",
        "Caterpillars turn into frogs.",
        "Cheese is made from sand.",
        "Camels live mainly at the bottom of the sea.",
        "Switzerland is surrounded by the sea.",
        "The Netherlands is known for its high mountains.",
        "The Thames flows through Moscow.",
        "Venice is famous for its volcanoes.",
        "Glass is made mainly from chocolate.",
        "Owls spend their whole lives underwater.",
        "A kilometre is ten metres.",
        "Apples grow on oak trees.",
        "Snakes are covered in feathers.",
        "Tigers are reptiles that lay their eggs in rivers.",
        "The Sun is a cold planet made of ice.",
        "Violins are played by blowing into them.",
        "Coffee is made from crushed seashells.",
        "Gravity makes objects fall upwards.",
        "A compass needle points towards the nearest river.",
        "Elephants fly over mountains by flapping their ears.",
    ),
}

# --- eval material (no sentence appears in training) ------------------------------------------------------
EVAL_TOPIC = {
    "cooking": ("Simmer the chopped carrots and lentils in stock for twenty minutes, then season with cumin.",
                "To make a basic omelette, whisk three eggs with a pinch of salt and cook them in butter.",
                "The recipe calls for two cups of flour, a teaspoon of yeast and warm water."),
    "sports": ("The relay team passed the baton cleanly on the final bend of the track.",
               "In volleyball, each side may touch the ball three times before returning it over the net.",
               "The cricket captain chose to bat first after winning the coin toss."),
    "programming": ("The function takes a list of integers and returns a new list sorted in ascending order.",
                    "Declare the variable inside the loop so that each iteration gets a fresh copy.",
                    "The script reads a configuration file, parses the JSON and starts the web server on port 8080."),
    "weather": ("Meteorologists expect a cold front to bring showers and falling temperatures by Thursday.",
                "Humidity stayed near ninety percent while clouds gathered over the hills in the afternoon.",
                "Overnight frost is likely in rural areas, with light winds from the north."),
    "music": ("The sonata is written in three movements, and the second is marked adagio.",
              "She tuned the cello, adjusted the bow and played a scale in D major.",
              "The drummer counted four beats before the bass and keyboard came in."),
    "medicine": ("The doctor measured the patient's blood pressure and ordered a blood test.",
                 "Take one tablet twice a day with food, and finish the full course of antibiotics.",
                 "The surgeon reviewed the X-ray before setting the broken bone in a cast."),
    "finance": ("The central bank kept its interest rate at four percent for another quarter.",
                "The quarterly report lists revenue, operating costs and net income for each division.",
                "She moved part of her savings from a checking account into government bonds."),
    "travel": ("Passengers for the evening ferry to the island should check in at the harbour terminal.",
               "We took the overnight train to the capital and then a bus to the mountain village.",
               "Remember to bring your passport, boarding pass and a printed copy of the hotel reservation."),
    "animals": ("The fox dug its den at the edge of the forest and hunts mostly at night.",
                "Frogs lay their eggs in ponds, where the tadpoles hatch after a few days.",
                "The shepherd moved the flock of sheep to the upper pasture for the summer."),
    "space": ("The comet's orbit brings it close to the Sun roughly once every seventy-six years.",
              "The space station circles the Earth about sixteen times a day.",
              "Astronomers measured the light from the distant star to estimate its temperature."),
}
EVAL_SENTIMENT = {
    "positive": (
        "The little bakery on the corner is a treasure; the staff are warm and the pastries are superb.",
        "I adore this new phone: the battery lasts for days and the camera is excellent.",
        "The film was moving and beautifully acted, and I left the cinema smiling.",
        "Our new neighbours are wonderful people and have made us feel so welcome.",
        "The museum's exhibition was inspiring and brilliantly organised.",
        "What a lovely surprise party; I felt truly grateful for such good friends.",
        "The repair shop fixed my bike quickly and charged a very fair price.",
        "This novel is gripping and funny, one of the best books I have read in years.",
        "The garden looks gorgeous this year, full of bright and healthy flowers.",
        "The customer service agent was patient and solved my problem in minutes.",
        "Our wedding day was perfect, full of laughter and happiness.",
        "The new playground is safe and clean, and the children absolutely love it.",
    ),
    "negative": (
        "The service at the restaurant was rude and slow, and the bill was far too high.",
        "This vacuum cleaner broke after two weeks and the company refuses to replace it.",
        "The film was boring and far too long, and the ending made no sense at all.",
        "Our landlord ignores every complaint, and the heating has been broken for a month.",
        "The meeting was a complete waste of time, and everyone left frustrated.",
        "I hate how noisy and crowded this office has become.",
        "The package arrived damaged, and half of the items inside were missing.",
        "The new software update made my laptop painfully slow and unreliable.",
        "The concert tickets were a rip-off and the view from our seats was terrible.",
        "My neighbour's constant shouting makes every evening stressful and unpleasant.",
        "The course was poorly taught, and the exam was unfair and confusing.",
        "The shoes fell apart after a week, a total waste of money.",
    ),
}
EVAL_LANGUAGE = {
    "French": ("Le marché ouvre tous les samedis sur la place de l'église.",
               "Ma sœur travaille dans une librairie près de la gare.",
               "Nous avons planté des tomates et des haricots dans le jardin.",
               "Le musée est fermé le lundi et les jours fériés.",
               "Les enfants vont à l'école à vélo quand il ne pleut pas.",
               "Il a acheté un vieux bateau pour pêcher sur le lac.",
               "La bibliothèque prête des livres, des films et des disques.",
               "Elle apprend à jouer de la flûte depuis deux ans."),
    "Spanish": ("El mercado abre todos los sábados en la plaza del pueblo.",
                "Mi hermano trabaja en una panadería cerca del puerto.",
                "Los niños juegan al fútbol en el parque después de clase.",
                "La biblioteca está cerrada los domingos por la tarde.",
                "Compramos pan, queso y fruta para el viaje en tren.",
                "Mi abuela cuenta historias antiguas sobre su pueblo.",
                "El río cruza la ciudad de norte a sur.",
                "Ella estudia medicina en la universidad de la capital."),
    "German": ("Der Markt findet jeden Samstag auf dem Rathausplatz statt.",
               "Meine Schwester arbeitet in einer Buchhandlung am Bahnhof.",
               "Im Herbst sammeln wir Äpfel und Birnen im Garten.",
               "Die Bibliothek ist montags und an Feiertagen geschlossen.",
               "Die Kinder fahren mit dem Fahrrad zur Schule.",
               "Mein Onkel repariert alte Uhren in seiner kleinen Werkstatt.",
               "Der Fluss fließt durch die Stadt bis zum Meer.",
               "Wir treffen uns am Abend vor dem Theater."),
    "English": ("The market opens every Saturday in the square beside the town hall.",
                "My cousin works at a hardware store near the bridge.",
                "The children collected shells along the beach after lunch.",
                "The library is closed on Sundays and public holidays.",
                "Our neighbour keeps bees in three wooden hives behind the shed.",
                "The old clock in the hallway chimes every hour.",
                "He painted the fence green and planted roses along it.",
                "The postman delivers letters to the village before noon."),
}
EVAL_TENSE = {
    "past": ("The committee approved the new budget last spring.",
             "We walked to the lighthouse and watched the sunset.",
             "She finished her thesis and submitted it on Friday.",
             "The old bridge collapsed during the flood of 1953.",
             "They moved to a small town near the coast.",
             "He repaired the roof before the winter storms arrived.",
             "The students visited the castle on a school trip.",
             "My grandfather built this table by hand.",
             "The orchestra rehearsed the piece for three weeks.",
             "Yesterday the shop sold every loaf of bread by noon."),
    "present": ("The river flows past the old mill.",
                "She teaches mathematics at the local school.",
                "The café opens at seven every morning.",
                "My brother lives in a flat above a bakery.",
                "The cat sleeps on the windowsill in the afternoon sun.",
                "Trains to the airport leave every fifteen minutes.",
                "He speaks three languages fluently.",
                "The garden smells of lavender in the summer.",
                "Our office uses solar panels for most of its electricity.",
                "The children play chess after dinner."),
    "future": ("The museum will open a new wing next year.",
               "We will travel to the mountains in August.",
               "The council will repair the road next month.",
               "She will start her new job on Monday.",
               "Tomorrow the team will announce the results of the survey.",
               "The new bridge will connect the two villages.",
               "They will plant a hundred trees along the river.",
               "I will call you after the meeting.",
               "The library will lend e-books from next spring.",
               "Next week the bakery will sell a new kind of bread."),
}
EVAL_NUMBER = {
    "singular": ("The teacher explains the lesson slowly.",
                 "A small boat drifts across the bay.",
                 "The old oak tree shades the whole garden.",
                 "My neighbour repairs bicycles in his garage.",
                 "The baker opens the shop before dawn.",
                 "A wild horse gallops across the plain.",
                 "The student writes notes in a blue notebook.",
                 "The train leaves from platform four.",
                 "Our dog waits by the door every evening.",
                 "The child draws pictures of dragons.",
                 "The scientist records the results carefully.",
                 "A lonely wolf howls at the moon.",
                 "The nurse checks the patient's temperature.",
                 "The farmer feeds the chickens at sunrise.",
                 "The singer practises her scales each morning."),
    "plural": ("The teachers grade the exams together.",
               "Several boats sail into the harbour at dusk.",
               "The apple trees bloom in early spring.",
               "My neighbours grow tomatoes on their balcony.",
               "The bakers knead the dough by hand.",
               "Wild geese fly south in the autumn.",
               "The students share a large table in the library.",
               "The buses stop outside the town hall.",
               "Our cats chase each other around the house.",
               "The children build a sandcastle on the beach.",
               "The engineers test the new engine in the lab.",
               "Two foxes hunt along the edge of the field.",
               "The doctors discuss the difficult case.",
               "The farmers bring their vegetables to the market.",
               "The dancers rehearse on the empty stage."),
}
EVAL_FACT = {
    "true": ("Water boils at 100 degrees Celsius at sea level.",
             "The Earth orbits the Sun once a year.",
             "Spiders have eight legs.",
             "The Pacific is the largest ocean on Earth.",
             "Ice is less dense than liquid water, so it floats.",
             "A week has seven days.",
             "Mount Everest is the highest mountain above sea level.",
             "Plants take in carbon dioxide and release oxygen during photosynthesis.",
             "The human heart pumps blood around the body.",
             "Paris is the capital of France.",
             "Sound travels faster in water than in air.",
             "Bees make honey from the nectar of flowers.",
             "The Moon reflects light from the Sun.",
             "A triangle has three sides.",
             "Whales are mammals and breathe air.",
             "Iron rusts when it is exposed to water and oxygen.",
             "The Sahara is a desert in Africa.",
             "Light travels faster than sound.",
             "There are sixty minutes in an hour.",
             "Penguins are birds that cannot fly."),
    "false": ("The Sun orbits the Earth once a day.",
              "Spiders have six legs.",
              "Water freezes at 50 degrees Celsius at sea level.",
              "The Atlantic is the largest ocean on Earth.",
              "A week has nine days.",
              "Penguins live mainly near the North Pole.",
              "The Moon is larger than the Earth.",
              "Whales are fish that breathe through gills.",
              "Berlin is the capital of Spain.",
              "Healthy adult humans have three lungs.",
              "A square has five equal sides.",
              "Bats are a kind of insect.",
              "Iron is lighter than air.",
              "Snow is usually warmer than boiling water.",
              "The Nile is a mountain range in Asia.",
              "Light travels more slowly than sound.",
              "There are ninety minutes in an hour.",
              "Mount Everest is located in Australia.",
              "Cows lay eggs in nests.",
              "Diamonds are softer than butter."),
}

# --- questions ------------------------------------------------------------------------------------------
OPEN_TOPIC = "What is the topic of this text?"
OPEN_SENTIMENT = "What is the sentiment of this text?"
OPEN_LANGUAGE = "What language is this text written in?"
FACT_QUESTION = "Is the statement in this text true?"
OPEN_FAMILY = {"tense": "What tense is this text written in?",  # -> past / present / future
               "number": "What is the grammatical number of the subject of this sentence?",  # -> singular / plural
               "fact": "What is the truth value of the statement in this text?"}  # -> true / false


def yes_no(question: str, truth: bool, family: str) -> dict:
    return {"question": question, "answer": "Yes" if truth else "No", "family": family}


def ask(family: str, label: str, asked: str) -> dict:
    """A yes/no question asking whether the text's `family` label is `asked`; the answer is label == asked."""
    question = {
        "topic": f"Is this text about {TOPIC_PHRASE.get(asked, asked)}?",
        "sentiment": f"Is the sentiment of this text {asked}?",
        "language": f"Is this text written in {asked}?",
        "tense": f"Is this text written in the {asked} tense?",
        "number": f"Is the subject of this sentence {asked}?",
    }[family]
    return yes_no(question, label == asked, family)


def asked_label(rng: random.Random, label: str, choices: tuple[str, ...], ask_true: bool) -> str:
    """The label to ask about: the true one, or a random other one (alternated by the caller for balance)."""
    return label if ask_true else rng.choice([c for c in choices if c != label])


def train_texts() -> list[tuple[str, str, str, str]]:
    """(context, topic, sentiment, language): each English sentence alone, consecutive pairs and two triples
    of the same topic and sentiment, and the other-language sentences alone."""
    texts = []
    for topic, (pos, neg) in TRAIN_EN.items():
        for sentiment, sents in (("positive", pos), ("negative", neg)):
            groups = [[s] for s in sents] + [sents[i:i + 2] for i in range(0, 6, 2)] + [sents[0::2], sents[1::2]]
            texts += [(" ".join(g), topic, sentiment, "English") for g in groups]
    texts += [(s, topic, sentiment, lang) for lang, topic, sentiment, s in TRAIN_OTHER]
    return texts


def build_train(rng: random.Random) -> list[dict]:
    texts = train_texts()
    rng.shuffle(texts)
    rows = []
    for i, (context, topic, sentiment, language) in enumerate(texts):
        other_topic = rng.choice([t for t in TOPICS if t != topic])
        questions = [
            ask("topic", topic, topic),
            ask("topic", topic, other_topic),
            ask("sentiment", sentiment, asked_label(rng, sentiment, ("positive", "negative"), i % 2 == 0)),
            ask("language", language, asked_label(rng, language, LANGUAGES, (i // 2) % 2 == 0)),
            {"question": OPEN_TOPIC, "answer": topic, "family": "topic"},
            {"question": OPEN_SENTIMENT, "answer": sentiment, "family": "sentiment"},
            {"question": OPEN_LANGUAGE, "answer": language, "family": "language"},
        ]
        rows.append({"id": f"train-{i:04d}", "context": context, "questions": questions,
                     "labels": {"topic": topic, "sentiment": sentiment, "language": language}})
    return rows


def build_train_families(rng: random.Random, start: int) -> list[dict]:
    """Rows for the tense, number and fact families, ids from train-{start}: one yes/no question (the eval's
    template) and one open question (answer: the label) per text.

    Within each tense/number label the texts are shuffled and asked, alternately, about their own label (Yes)
    and about each other label in turn (No); fact texts are all asked FACT_QUESTION. So every yes/no question
    string is answered Yes exactly as often as No: its wording says nothing about its answer.
    """
    items = []  # (context, family, label, yes/no question)
    for family, table in (("tense", TRAIN_TENSE), ("number", TRAIN_NUMBER)):
        for label, sents in table.items():
            others = [c for c in table if c != label]
            order = list(sents)
            rng.shuffle(order)
            for j, s in enumerate(order):
                asked = label if j % 2 == 0 else others[(j // 2) % len(others)]
                items.append((s, family, label, ask(family, label, asked)))
    for label, sents in TRAIN_FACT.items():
        items += [(s, "fact", label, yes_no(FACT_QUESTION, label == "true", "fact")) for s in sents]
    rng.shuffle(items)
    return [{"id": f"train-{start + i:04d}", "context": context,
             "questions": [question, {"question": OPEN_FAMILY[family], "answer": label, "family": family}],
             "labels": {family: label}}
            for i, (context, family, label, question) in enumerate(items)]


def build_eval(rng: random.Random) -> list[dict]:
    items = []  # (context, family, label, questions)
    for topic, sents in EVAL_TOPIC.items():
        for s in sents:  # two questions per text: the true topic and another one
            other = rng.choice([t for t in TOPICS if t != topic])
            items.append((s, "topic", topic, [ask("topic", topic, topic), ask("topic", topic, other)]))
    for family, table, choices in (("sentiment", EVAL_SENTIMENT, ("positive", "negative")),
                                   ("language", EVAL_LANGUAGE, LANGUAGES),
                                   ("tense", EVAL_TENSE, ("past", "present", "future")),
                                   ("number", EVAL_NUMBER, ("singular", "plural"))):
        labelled = [(s, label) for label, sents in table.items() for s in sents]
        rng.shuffle(labelled)
        for j, (s, label) in enumerate(labelled):  # alternate true/other questions: half Yes, half No
            items.append((s, family, label, [ask(family, label, asked_label(rng, label, choices, j % 2 == 0))]))
    for label, sents in EVAL_FACT.items():
        items += [(s, "fact", label, [yes_no(FACT_QUESTION, label == "true", "fact")]) for s in sents]
    rng.shuffle(items)
    return [{"id": f"eval-{i:04d}", "context": context, "questions": questions, "labels": {family: label}}
            for i, (context, family, label, questions) in enumerate(items)]


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def eval_overlaps(train: list[dict], evals: list[dict]) -> list[str]:
    """Eval contexts that equal, contain or are contained in a training context (case-insensitive)."""
    train_contexts = [row["context"].lower() for row in train]
    return [row["context"] for row in evals
            if any(row["context"].lower() in t or t in row["context"].lower() for t in train_contexts)]


def build_all() -> dict[str, str]:
    """File name -> JSONL text of both shipped sets. One generator seeded with SEED draws the topic/sentiment/
    language training rows, then the eval set; the tense/number/fact training rows (appended after them) have
    their own generator, so adding them changed no draw of the eval set."""
    rng = random.Random(SEED)
    train = build_train(rng)
    train += build_train_families(random.Random(FAMILY_SEED), start=len(train))
    evals = build_eval(rng)
    overlaps = eval_overlaps(train, evals)
    if overlaps:
        raise ValueError(f"eval texts also in training (rewrite the training sentence): {overlaps}")
    return {"builtin_train.jsonl": render(train), "builtin_eval.jsonl": render(evals)}


def main(argv: list[str]) -> int:
    """Write the files, or with --check exit 1 when the shipped files differ from what would be written."""
    stale = []
    for name, text in build_all().items():
        path = OUT_DIR / name
        if "--check" in argv:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
            continue
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path} ({text.count(chr(10))} rows)")
    if stale:
        print(f"out of date: {stale}; run python scripts/make_builtin_data.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
