//! Model prices: a built-in, dated table of list prices that a host may extend or override.
//!
//! Prices are in US dollars per million tokens, as the providers publish them (standard
//! tier, no batch discount). A model the table does not know has no price, so its cost
//! is unknown (`None`), never zero.
//!
//! Anthropic bills prompt-cache writes at a premium over plain input; usage reports them
//! only as input here, so they are costed at the input price.

use std::collections::HashMap;

use concerto_vm::host::Usage;

/// The date the built-in prices were last checked against the providers' price lists.
pub const PRICES_VERSION: &str = "2026-11-25";

/// Prices of one model, in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    /// Input tokens not served from the prompt cache.
    pub input: f64,
    /// Input tokens served from the prompt cache.
    pub cached_input: f64,
    /// Output tokens (reasoning tokens included).
    pub output: f64,
}

impl Price {
    /// A price from its three rates (USD per million tokens).
    pub const fn new(input: f64, cached_input: f64, output: f64) -> Price {
        Price {
            input,
            cached_input,
            output,
        }
    }

    /// The cost of `usage` in US dollars: cached input at the cached rate, the rest of the
    /// input at the input rate, output at the output rate.
    pub fn cost(&self, usage: &Usage) -> f64 {
        let cached = usage.cached_tokens.min(usage.input_tokens);
        let uncached = usage.input_tokens - cached;
        (uncached as f64 * self.input
            + cached as f64 * self.cached_input
            + usage.output_tokens as f64 * self.output)
            / 1_000_000.0
    }
}

/// The built-in list prices (see [`PRICES_VERSION`]). Keys are base model ids; dated
/// snapshots (`gpt-4o-2024-08-06`, `claude-sonnet-4-20250514`) and `-latest` aliases find
/// their base id.
const BUILTIN: &[(&str, Price)] = &[
    // OpenAI (platform.openai.com / developers.openai.com pricing, standard tier).
    ("gpt-4o", Price::new(2.50, 1.25, 10.00)),
    ("gpt-4o-mini", Price::new(0.15, 0.075, 0.60)),
    ("gpt-4.1", Price::new(2.00, 0.50, 8.00)),
    ("gpt-4.1-mini", Price::new(0.40, 0.10, 1.60)),
    ("gpt-4.1-nano", Price::new(0.10, 0.025, 0.40)),
    ("o3", Price::new(2.00, 0.50, 8.00)),
    ("o3-mini", Price::new(1.10, 0.55, 4.40)),
    ("o4-mini", Price::new(1.10, 0.275, 4.40)),
    ("gpt-5", Price::new(1.25, 0.125, 10.00)),
    ("gpt-5-mini", Price::new(0.25, 0.025, 2.00)),
    ("gpt-5-nano", Price::new(0.05, 0.005, 0.40)),
    // Anthropic (platform.claude.com pricing; "cache hits" as the cached rate).
    ("claude-opus-4", Price::new(15.00, 1.50, 75.00)),
    ("claude-opus-4-0", Price::new(15.00, 1.50, 75.00)),
    ("claude-opus-4-1", Price::new(15.00, 1.50, 75.00)),
    ("claude-opus-4-5", Price::new(5.00, 0.50, 25.00)),
    ("claude-sonnet-4", Price::new(3.00, 0.30, 15.00)),
    ("claude-sonnet-4-0", Price::new(3.00, 0.30, 15.00)),
    ("claude-sonnet-4-5", Price::new(3.00, 0.30, 15.00)),
    ("claude-3-7-sonnet", Price::new(3.00, 0.30, 15.00)),
    ("claude-haiku-4-5", Price::new(1.00, 0.10, 5.00)),
    ("claude-3-5-haiku", Price::new(0.80, 0.08, 4.00)),
];

/// Prices by model id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceTable {
    /// Lower-case model id → price.
    prices: HashMap<String, Price>,
}

impl PriceTable {
    /// The built-in table ([`PRICES_VERSION`]).
    pub fn builtin() -> PriceTable {
        let mut table = PriceTable::empty();
        for (model, price) in BUILTIN {
            table.set(*model, *price);
        }
        table
    }

    /// A table without prices (every cost is unknown until [`PriceTable::set`]).
    pub fn empty() -> PriceTable {
        PriceTable::default()
    }

    /// Sets (or replaces) the price of `model`. Setting a base id (`gpt-4o`) also prices
    /// its dated snapshots unless they have prices of their own.
    pub fn set(&mut self, model: impl Into<String>, price: Price) {
        self.prices.insert(model.into().to_ascii_lowercase(), price);
    }

    /// How many model ids have prices.
    pub fn len(&self) -> usize {
        self.prices.len()
    }

    /// Whether no model has a price.
    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }

    /// The price of `model`: its exact id first, then the longest known id of which it is
    /// a dated snapshot or `-latest` alias (`gpt-4o-2024-08-06` → `gpt-4o`, but never
    /// `gpt-4o-mini` → `gpt-4o`).
    pub fn get(&self, model: &str) -> Option<Price> {
        let model = model.trim().to_ascii_lowercase();
        if let Some(price) = self.prices.get(&model) {
            return Some(*price);
        }
        self.prices
            .iter()
            .filter(|(base, _)| {
                model
                    .strip_prefix(base.as_str())
                    .is_some_and(is_version_suffix)
            })
            .max_by_key(|(base, _)| base.len())
            .map(|(_, price)| *price)
    }

    /// The cost of `usage` on `model` in US dollars; `None` when the model has no price.
    pub fn cost(&self, model: &str, usage: &Usage) -> Option<f64> {
        self.get(model).map(|price| price.cost(usage))
    }
}

/// Whether `rest` (what follows a base id) names a snapshot of it: `-latest`,
/// `-YYYYMMDD` or `-YYYY-MM-DD`.
fn is_version_suffix(rest: &str) -> bool {
    let Some(rest) = rest.strip_prefix('-') else {
        return false;
    };
    if rest == "latest" {
        return true;
    }
    let bytes = rest.as_bytes();
    let all_digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    match bytes.len() {
        8 => all_digits(bytes),
        10 => {
            bytes.get(4) == Some(&b'-')
                && bytes.get(7) == Some(&b'-')
                && bytes.get(..4).is_some_and(all_digits)
                && bytes.get(5..7).is_some_and(all_digits)
                && bytes.get(8..).is_some_and(all_digits)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, cached: u64, output: u64) -> Usage {
        Usage {
            input_tokens: input,
            cached_tokens: cached,
            output_tokens: output,
            estimated: false,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn version_is_a_date() {
        assert!(is_version_suffix(&format!("-{PRICES_VERSION}")));
    }

    #[test]
    fn builtin_covers_the_common_models() {
        let table = PriceTable::builtin();
        for model in [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4.1",
            "gpt-4.1-mini",
            "gpt-4.1-nano",
            "o3",
            "o4-mini",
            "claude-opus-4",
            "claude-sonnet-4",
            "claude-3-5-haiku",
            "claude-haiku-4-5",
            "gpt-4o-2024-08-06",
            "gpt-4o-mini-2024-07-18",
            "gpt-4.1-2025-04-14",
            "o3-2025-04-16",
            "o4-mini-2025-04-16",
            "claude-opus-4-20250514",
            "claude-sonnet-4-20250514",
            "claude-3-5-haiku-20241022",
            "claude-3-5-haiku-latest",
            "claude-haiku-4-5-20251001",
            "claude-sonnet-4-5-20250929",
            "claude-opus-4-1-20250805",
        ] {
            assert!(table.get(model).is_some(), "{model}");
        }
        assert!(!table.is_empty() && table.len() == BUILTIN.len());
        for (model, price) in BUILTIN {
            assert!(price.input > 0.0 && price.output > price.input, "{model}");
            assert!(price.cached_input < price.input, "{model}");
        }
    }

    #[test]
    fn dated_ids_find_their_base_but_siblings_do_not_collide() {
        let table = PriceTable::builtin();
        assert_eq!(table.get("gpt-4o-2024-08-06"), table.get("gpt-4o"));
        assert_eq!(
            table.get("gpt-4o-mini-2024-07-18"),
            table.get("gpt-4o-mini")
        );
        assert_ne!(table.get("gpt-4o-mini"), table.get("gpt-4o"));
        assert_eq!(
            table.get("claude-sonnet-4-20250514"),
            Some(Price::new(3.0, 0.3, 15.0))
        );
        assert_eq!(
            table.get("claude-opus-4-5-20251101"),
            Some(Price::new(5.0, 0.5, 25.0))
        );
        assert_eq!(
            table.get("claude-opus-4-20250514"),
            Some(Price::new(15.0, 1.5, 75.0))
        );
        assert_eq!(table.get("GPT-4o"), table.get("gpt-4o"));
        // Not a snapshot of a known model: no guess.
        for unknown in [
            "gpt-4o-audio-preview",
            "gpt-4",
            "claude-opus-4-7",
            "o3-pro",
            "llama3.1:8b",
            "gpt-4o-2024",
            "mock",
            "",
        ] {
            assert_eq!(table.get(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn costs() {
        let table = PriceTable::builtin();
        // gpt-4o: 1000 uncached at 2.50, 1000 cached at 1.25, 500 out at 10.00 per million.
        let cost = table.cost("gpt-4o", &usage(2000, 1000, 500)).unwrap();
        assert!(close(
            cost,
            (1000.0 * 2.5 + 1000.0 * 1.25 + 500.0 * 10.0) / 1e6
        ));
        let cost = table
            .cost("claude-haiku-4-5-20251001", &usage(1_000_000, 0, 1_000_000))
            .unwrap();
        assert!(close(cost, 6.0));
        // Inconsistent counts never cost more cached tokens than input tokens.
        let cost = table.cost("gpt-4o", &usage(10, 50, 0)).unwrap();
        assert!(close(cost, 10.0 * 1.25 / 1e6));
        assert_eq!(table.cost("gpt-4o", &usage(0, 0, 0)), Some(0.0));
        assert_eq!(table.cost("unknown-model", &usage(100, 0, 100)), None);
        assert_eq!(
            PriceTable::empty().cost("gpt-4o", &usage(100, 0, 100)),
            None
        );
    }

    #[test]
    fn host_prices_extend_and_override() {
        let mut table = PriceTable::builtin();
        table.set("llama3.1", Price::new(0.0, 0.0, 0.0));
        assert_eq!(table.cost("llama3.1", &usage(100, 0, 100)), Some(0.0));
        table.set("gpt-4o", Price::new(1.0, 0.5, 2.0));
        assert_eq!(
            table.get("gpt-4o-2024-08-06"),
            Some(Price::new(1.0, 0.5, 2.0))
        );
        table.set("gpt-4o-2024-08-06", Price::new(9.0, 9.0, 9.0));
        assert_eq!(
            table.get("gpt-4o-2024-08-06"),
            Some(Price::new(9.0, 9.0, 9.0))
        );
        assert_eq!(
            table.get("gpt-4o-2024-11-20"),
            Some(Price::new(1.0, 0.5, 2.0))
        );
        let mut empty = PriceTable::empty();
        assert!(empty.is_empty());
        empty.set("My-Model", Price::new(1.0, 1.0, 1.0));
        assert_eq!(empty.get("my-model"), Some(Price::new(1.0, 1.0, 1.0)));
    }
}
