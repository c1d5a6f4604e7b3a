//! MessagePack (named fields) for every bus payload.

use serde::{Serialize, de::DeserializeOwned};

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("msgpack encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("msgpack decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(rmp_serde::to_vec_named(value)?)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    Ok(rmp_serde::from_slice(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    #[test]
    fn stream_chunk_round_trips() {
        let c = StreamChunk {
            seq: 3,
            body: ChunkBody::Payload(EngineOutput {
                token_ids: vec![1, 2],
                finish_reason: Some(FinishReason::Length),
                ..Default::default()
            }),
        };
        let back: StreamChunk = decode(&encode(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let e: StreamChunk = StreamChunk {
            seq: 4,
            body: ChunkBody::Error(ErrorInfo::new(ErrorKind::Overloaded, "full")),
        };
        assert_eq!(decode::<StreamChunk>(&encode(&e).unwrap()).unwrap(), e);
    }

    #[test]
    fn request_round_trips_and_ids_are_transparent() {
        let r = PreprocessedRequest {
            request_id: RequestId::new(),
            model: "m".into(),
            token_ids: vec![5, 6, 7],
            generated_so_far: 0,
            sampling: SamplingParams::default(),
            stop: StopConditions {
                max_tokens: 4,
                ..Default::default()
            },
            dp_rank: DpRank(1),
            extra_hash_key: 0,
            prompt_embeds: None,
        };
        assert_eq!(
            decode::<PreprocessedRequest>(&encode(&r).unwrap()).unwrap(),
            r
        );
        assert_eq!(serde_json::to_string(&InstanceId(5)).unwrap(), "5");
        assert!(decode::<StreamChunk>(b"garbage").is_err());
    }
}
