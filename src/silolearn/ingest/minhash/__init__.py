"""MinHash-LSH near-duplicate search with exact verification, for the contamination filter.

A training record is contaminated when the Jaccard similarity of its n-gram shingle set with
the shingle set of some evaluation record reaches ``MinHashConfig.threshold``. Comparing every
record with every evaluation record is too slow for the ingestion path, so this module finds
candidates with MinHash signatures and locality-sensitive hashing (LSH), then decides each
candidate on the *exact* Jaccard similarity of the stored shingle sets. Precision is therefore
exact; recall is the LSH recall, which the banding (see ``choose_banding``) keeps near 1 at the
threshold.

Pipeline, vectorised with numpy over whole batches of documents:

1. ``normalise``: Unicode NFKC, case folding, every character that is not a letter, mark or
   number (punctuation, symbols, whitespace, controls) becomes a space, whitespace runs
   collapse to one space. The batch path folds characters through a lookup table over code
   points and is tested to agree with the reference implementation character for character.
2. ``shingle_hashes``: a 32-bit hash of every n-gram of words (default) or characters, as
   sorted unique ``uint32``. Words are hashed with a polynomial hash over their code points,
   computed for a whole batch at once from prefix sums (``sum(x_i * P**i)`` mod 2**32, made
   position-independent by multiplying with ``P**-start``), and n-grams with a polynomial
   over the unit hashes mod 2**64, then a multiply whose high half is kept. No Python
   ``hash()`` is used (it is salted per process): the same text gives the same hashes
   everywhere.
3. ``MinHasher``: ``num_perm`` slots, each a MinHash, i.e. the shingle that is minimal
   under a per-slot random order. Instead of evaluating ``num_perm`` hash functions per
   shingle, each shingle is thrown into one slot per round for a few rounds and ranked there
   (the idea of Fast Similarity Sketching, Dahlgaard, Knudsen and Thorup, 2017); slots still
   empty after the rounds take the minimum of their own hash function over the document's
   shingles. For every slot the order ``(first round the shingle lands in the slot, its
   rank)`` is a function of the shingle alone, so two sets collide in a slot with
   probability exactly equal to their Jaccard similarity, as with classic MinHash, at a
   fraction of the cost for long documents. A slot stores the hash of its minimal shingle.
4. ``LSHIndex``: signatures cut into ``bands`` bands of ``rows`` rows; each band becomes one
   32-bit key. Keys live in one sorted array with a table of bucket starts (two memory
   accesses per lookup), looked up for whole batches of queries at once; candidates are
   verified on the stored shingle sets. ``to_bytes``/``from_bytes`` persist it (checked by a
   digest), ``merge`` joins segments.

Hashes are non-cryptographic: this filter guards against accidental overlap, not against
someone paraphrasing evaluation data on purpose.
"""

from __future__ import annotations

from silolearn.ingest.minhash.config import MinHashConfig, choose_banding
from silolearn.ingest.minhash.index import Candidate, LSHIndex
from silolearn.ingest.minhash.shingles import normalise_many, shingle_hashes, shingle_hashes_many
from silolearn.ingest.minhash.signatures import MinHasher
from silolearn.text import normalise

__all__ = [
    "Candidate",
    "LSHIndex",
    "MinHashConfig",
    "MinHasher",
    "choose_banding",
    "normalise",
    "normalise_many",
    "shingle_hashes",
    "shingle_hashes_many",
]
