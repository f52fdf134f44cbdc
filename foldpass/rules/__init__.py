"""Rule libraries the passes use. A rule library holds no pass (no PassResult): it answers
questions about a piece of graph (conv_merging: "is this region one conv in disguise, and which?")
and the pass that owns the rewrite (affine_folding) decides and records."""
