"""Write examples/housing.csv: a synthetic but realistic-looking house-price table.

Run: python examples/make_housing.py  (seeded: the same file every time)
"""

from pathlib import Path

import numpy as np
import pandas as pd

rng = np.random.default_rng(7)
n = 1500
neighborhood = rng.choice(["centre", "riverside", "suburbs", "hills"], size=n, p=[0.2, 0.25, 0.4, 0.15])
sqft = rng.normal(1600, 450, n).clip(450, 4200).round()
bedrooms = np.clip(np.round(sqft / 550 + rng.normal(0, 0.7, n)), 1, 7).astype(int)
age = rng.integers(0, 90, n)
distance_km = np.abs(rng.normal(8, 5, n)).round(1)
premium = pd.Series(neighborhood).map({"centre": 90_000, "riverside": 60_000, "suburbs": 0, "hills": 30_000})
price = (
    40_000 + 155 * sqft + 9_000 * bedrooms - 650 * age - 3_200 * distance_km
    + premium.to_numpy() + rng.normal(0, 25_000, n)
).round(-2)
df = pd.DataFrame({
    "sqft": sqft, "bedrooms": bedrooms, "age_years": age, "distance_km": distance_km,
    "neighborhood": neighborhood, "price": price,
})
out = Path(__file__).with_name("housing.csv")
df.to_csv(out, index=False)
print(f"wrote {out} ({len(df)} rows)")
