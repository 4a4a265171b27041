"""The parts of bench/train_step.py, one job a file: archs, flops, synthetic, engines, reference, measure, report."""
