"""CausalSTDiT, the Ca2-VDM transformer: config, layers, blocks, model, its KV-cache layout, conversion and
cost formulas.
"""
