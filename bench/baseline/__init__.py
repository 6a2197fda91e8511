"""The baseline the benchmark compares peatio-ws with (see L{bench.baseline.bridge})."""
