"""otc: institutional OTC quote and slippage engine."""
