//! Prompt text of an exact token count: random ordinary vocabulary words, re-tokenized
//! with the model's real tokenizer and adjusted until the count is right. Without a
//! tokenizer, lengths are counted in words (approximate tokens).

use std::path::Path;

use ferrite_model::{ModelCard, Tokenizer};
use rand::Rng;

use crate::error::{BenchError, Result};

/// Most attempts to hit an exact count before settling for the closest.
const FIT_ROUNDS: usize = 24;
/// Enough distinct words for random prompts; scanning stops here.
const MAX_WORDS: usize = 8192;

/// Common English words, the fallback vocabulary when no tokenizer is given.
const PLAIN_WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "that",
    "for",
    "on",
    "with",
    "as",
    "by",
    "at",
    "from",
    "time",
    "people",
    "year",
    "way",
    "day",
    "man",
    "thing",
    "woman",
    "life",
    "child",
    "world",
    "school",
    "state",
    "family",
    "student",
    "group",
    "country",
    "problem",
    "hand",
    "part",
    "place",
    "case",
    "week",
    "company",
    "system",
    "program",
    "question",
    "work",
    "government",
    "number",
    "night",
    "point",
    "home",
    "water",
    "room",
    "mother",
    "area",
    "money",
    "story",
    "fact",
    "month",
    "lot",
    "right",
    "study",
    "book",
    "eye",
    "job",
    "word",
    "business",
    "issue",
    "side",
    "kind",
    "head",
    "house",
    "service",
    "friend",
    "father",
    "power",
    "hour",
    "game",
    "line",
    "end",
    "member",
    "law",
    "car",
    "city",
    "community",
    "name",
    "president",
    "team",
    "minute",
    "idea",
    "kid",
    "body",
    "information",
    "back",
    "parent",
    "face",
    "others",
    "level",
    "office",
    "door",
    "health",
    "person",
    "art",
    "war",
    "history",
    "party",
    "result",
];

enum Counter {
    Tokens(Box<Tokenizer>),
    Words,
}

/// Builds prompt text of a wanted length.
pub struct PromptBuilder {
    counter: Counter,
    /// Each entry starts with a space and is (ideally) one token.
    words: Vec<String>,
}

/// A built piece of text and its length (tokens, or words when not exact).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Built {
    pub text: String,
    pub len: usize,
}

impl PromptBuilder {
    /// Loads a tokenizer from `tokenizer.json`, a folder holding one, or anything
    /// [`ModelCard::load`] accepts (HF folder, `.gguf`).
    pub fn load(path: &Path) -> Result<Self> {
        let tok = if path.is_file() && path.extension().is_some_and(|e| e == "json") {
            Tokenizer::from_file(path)?
        } else if path.join("tokenizer.json").is_file() {
            Tokenizer::from_file(&path.join("tokenizer.json"))?
        } else {
            ModelCard::load(path)?.tokenizer
        };
        Self::from_tokenizer(tok)
    }

    /// Exact token counts with `tok`.
    pub fn from_tokenizer(tok: Tokenizer) -> Result<Self> {
        let words = word_tokens(&tok)?;
        Ok(Self {
            counter: Counter::Tokens(Box::new(tok)),
            words,
        })
    }

    /// No tokenizer: lengths are word counts, an approximation of tokens.
    pub fn approximate() -> Self {
        Self {
            counter: Counter::Words,
            words: PLAIN_WORDS.iter().map(|w| format!(" {w}")).collect(),
        }
    }

    /// Whether lengths are real token counts.
    pub fn is_exact(&self) -> bool {
        matches!(self.counter, Counter::Tokens(_))
    }

    /// How many distinct words prompts are drawn from.
    pub fn vocabulary(&self) -> usize {
        self.words.len()
    }

    /// Length of `text`: tokens (no special tokens added), or words.
    pub fn count(&self, text: &str) -> Result<usize> {
        match &self.counter {
            Counter::Tokens(t) => Ok(t.encode(text, false)?.len()),
            Counter::Words => Ok(text.split_whitespace().count()),
        }
    }

    /// Token ids of `text` (tokenizer mode only).
    pub fn encode(&self, text: &str) -> Result<Option<Vec<u32>>> {
        match &self.counter {
            Counter::Tokens(t) => Ok(Some(t.encode(text, false)?)),
            Counter::Words => Ok(None),
        }
    }

    fn word(&self, rng: &mut impl Rng) -> &str {
        let i = rng.random_range(0..self.words.len());
        &self.words[i]
    }

    /// Random text of `len` tokens on its own.
    pub fn text(&self, rng: &mut impl Rng, len: usize) -> Result<Built> {
        self.extend("", 0, rng, len)
    }

    /// `base` (of `base_len` tokens) followed by random words so that the whole is
    /// `base_len + extra` tokens. `base` is kept byte for byte; returns the whole text.
    pub fn extend(
        &self,
        base: &str,
        base_len: usize,
        rng: &mut impl Rng,
        extra: usize,
    ) -> Result<Built> {
        let target = base_len + extra;
        let mut words: Vec<&str> = (0..extra).map(|_| self.word(rng)).collect();
        let join = |w: &[&str]| {
            let mut s = String::with_capacity(base.len() + w.len() * 8);
            s.push_str(base);
            w.iter().for_each(|x| s.push_str(x));
            s
        };
        let mut best: Option<Built> = None;
        for _ in 0..FIT_ROUNDS {
            let text = join(&words);
            let n = self.count(&text)?;
            let closer = best
                .as_ref()
                .is_none_or(|b| n.abs_diff(target) < b.len.abs_diff(target));
            if closer {
                best = Some(Built { text, len: n });
            }
            if n == target {
                break;
            }
            if n > target {
                let drop = (n - target).min(words.len());
                if drop == 0 {
                    break; // the base alone is already too long
                }
                words.truncate(words.len() - drop.max(1));
            } else {
                for _ in 0..target - n {
                    words.push(self.word(rng));
                }
            }
        }
        best.ok_or_else(|| BenchError::Config("empty prompt".into()))
    }
}

/// Vocabulary entries that are a space plus lowercase ASCII letters and encode back
/// to exactly themselves: concatenations of them tokenize additively.
fn word_tokens(tok: &Tokenizer) -> Result<Vec<String>> {
    let mut verified = Vec::new();
    let mut shaped = Vec::new();
    for id in 0..tok.vocab_size() as u32 {
        if verified.len() >= MAX_WORDS {
            break;
        }
        if tok.is_special(id) {
            continue;
        }
        let Some(piece) = tok.token_to_piece(id) else {
            continue;
        };
        let Some(rest) = piece.strip_prefix('Ġ').or_else(|| piece.strip_prefix('▁')) else {
            continue;
        };
        if !(2..=12).contains(&rest.len()) || !rest.bytes().all(|b| b.is_ascii_lowercase()) {
            continue;
        }
        let word = format!(" {rest}");
        if tok.encode(&word, false)? == [id] {
            verified.push(word);
        } else {
            shaped.push(word);
        }
    }
    // Tokenizers that prepend a space marker (SentencePiece style) never give back the
    // single token for " word"; their shaped words still tokenize one per word in a text.
    let words = if verified.len() >= 32 {
        verified
    } else {
        verified.extend(shaped);
        verified
    };
    if words.is_empty() {
        return Err(BenchError::Config(
            "the tokenizer has no ordinary word tokens (space + lowercase letters) to build prompts from".into(),
        ));
    }
    Ok(words)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::path::PathBuf;

    /// The shared models folder (`FERRITE_TEST_MODELS`, default `../shared/models`).
    pub(crate) fn models_dir() -> PathBuf {
        std::env::var_os("FERRITE_TEST_MODELS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models")
            })
    }

    pub(crate) fn smollm2() -> PromptBuilder {
        let p = models_dir().join("smollm2-135m-instruct/tokenizer.json");
        PromptBuilder::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn exact_token_counts_with_a_real_tokenizer() {
        let b = smollm2();
        assert!(b.is_exact());
        assert!(b.vocabulary() > 1000, "{}", b.vocabulary());
        let mut rng = StdRng::seed_from_u64(7);
        for len in [1, 2, 17, 128, 512, 2000] {
            let p = b.text(&mut rng, len).unwrap();
            assert_eq!(p.len, len);
            assert_eq!(
                b.count(&p.text).unwrap(),
                len,
                "{:?}",
                &p.text[..40.min(p.text.len())]
            );
        }
    }

    #[test]
    fn extend_keeps_the_base_and_hits_the_total() {
        let b = smollm2();
        let mut rng = StdRng::seed_from_u64(1);
        let base = b.text(&mut rng, 300).unwrap();
        let whole = b.extend(&base.text, base.len, &mut rng, 45).unwrap();
        assert!(whole.text.starts_with(&base.text));
        assert_eq!(b.count(&whole.text).unwrap(), 345);
        let (bt, wt) = (
            b.encode(&base.text).unwrap().unwrap(),
            b.encode(&whole.text).unwrap().unwrap(),
        );
        assert_eq!(&wt[..300], &bt[..]);
    }

    #[test]
    fn sentencepiece_tokenizer_also_fits() {
        let p = models_dir().join("stories260k");
        let b = PromptBuilder::load(&p).unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        for len in [5, 64, 200] {
            let t = b.text(&mut rng, len).unwrap();
            assert_eq!(b.count(&t.text).unwrap(), len);
        }
    }

    #[test]
    fn approximate_mode_counts_words() {
        let b = PromptBuilder::approximate();
        assert!(!b.is_exact());
        let mut rng = StdRng::seed_from_u64(3);
        let t = b.text(&mut rng, 50).unwrap();
        assert_eq!(t.text.split_whitespace().count(), 50);
        assert_eq!(t.len, 50);
    }
}
