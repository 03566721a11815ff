"""Real-time background replacement: capture → infer → temporal smoothing → composite."""
