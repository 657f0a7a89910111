"""Table 17 and the paper's figures from result files."""
