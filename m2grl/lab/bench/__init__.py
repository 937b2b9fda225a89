"""The benchmarks behind `m2grl bench`: each measures its baseline in the same run and prints JSON."""
