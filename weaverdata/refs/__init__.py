"""Pure decision logic for `weaverdata build-refs`: reference-guided image samples.

A reference sample is a target image plus 1..N references showing the same subject. This
package decides which images become such samples; apart from :mod:`.mining` (Ray tasks over an index, and the grouping split by
components) it knows nothing of Ray, files or models,
and every function takes plain values (numbers, numpy arrays) and returns plain values.

========================  ==================================================================
module                    what it decides
========================  ==================================================================
:mod:`.shots`             video: frame signatures, shot cuts, and which frames pair inside a
                          shot (WeGen: a target and references a fixed interval before it;
                          never across a cut)
:mod:`.grouping`          image collections: similarity graph, repeated maximum cliques of
                          2..6 images (MetaQuery), and which member is the target
:mod:`.components`        the grouping in pieces: union-find components of the edge arrays,
                          batches of whole components, cliques per batch, the global order
:mod:`.band`              whether a reference stays: cosine inside [low, high] and no
                          perceptual-hash near-copy; thresholds absolute or quantiles
:mod:`.knn`               corpus scale: faiss / brute-force neighbours, unique pairs, pairs in
                          the band and hard negatives, recall@k
:mod:`.quality`           per-image quality: size, aspect ratio, blur, exposure
:mod:`.samples`           candidates (video pairs, cliques) to sample plans: band per
                          reference, task kinds, why an unused image is unused; per-image
                          fields as columns (:class:`.samples.Images`)
:mod:`.mining`            the one Ray edge here: the faiss index searched in parallel Ray
                          tasks over query blocks (same result as :func:`.knn.mine_pairs`);
                          the grouping of a large corpus by components in Ray tasks
                          (:func:`.mining.group_corpus`, same groups as in one process)
:mod:`.vectors`           L2 normalisation shared by the above
========================  ==================================================================

Filters return :class:`weaverdata.engines.checks.Verdict` (keep, or drop with a
machine-readable reason), the same type the caption checks use.
"""
