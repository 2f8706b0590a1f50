//! JWT signing keys: generation, sealing at rest, and the in-memory key ring that signs
//! access tokens and verifies them.

use std::{collections::HashMap, fmt, str::FromStr};

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chacha20poly1305::{
    XChaCha20Poly1305, XNonce,
    aead::{Aead, KeyInit, Payload},
};
use jsonwebtoken::{
    Algorithm, DecodingKey, Header, Validation,
    jwk::{
        AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters, EllipticCurveKeyType, Jwk,
        JwkSet, KeyAlgorithm, OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse, ThumbprintHash,
    },
};
use secrecy::{ExposeSecret, SecretBox};
use serde::{Deserialize, Serialize};

/// The signature algorithms keygate issues. Both are asymmetric: gateways verify with the
/// published public key and can never mint tokens themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SigningAlg {
    Es256,
    EdDsa,
}

impl SigningAlg {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }

    pub fn jwt(self) -> Algorithm {
        match self {
            Self::Es256 => Algorithm::ES256,
            Self::EdDsa => Algorithm::EdDSA,
        }
    }
}

impl FromStr for SigningAlg {
    type Err = SigningError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ES256" => Ok(Self::Es256),
            "EdDSA" => Ok(Self::EdDsa),
            _ => Err(SigningError::UnknownAlgorithm),
        }
    }
}

impl fmt::Display for SigningAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("unknown signing algorithm (expected ES256 or EdDSA)")]
    UnknownAlgorithm,
    #[error("key generation failed")]
    Generate,
    #[error("a stored signing key cannot be opened: wrong KEYGATE_MASTER_KEY, or the key was altered")]
    Unseal,
    #[error("a stored signing key is malformed")]
    Malformed,
    #[error("no active signing key")]
    NoActiveKey,
    #[error("token signing failed")]
    Sign,
}

/// A signing key as it is stored: the private half sealed, the public half in the clear.
#[derive(Clone)]
pub struct SealedKey {
    pub kid: String,
    pub alg: SigningAlg,
    pub sealed_private: Vec<u8>,
    pub public_key: Vec<u8>,
}

impl fmt::Debug for SealedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedKey").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

/// Encrypts and decrypts private keys at rest. XChaCha20-Poly1305 with a random 192-bit
/// nonce (no counter to coordinate between replicas), and the kid and algorithm as
/// associated data, so a sealed blob cannot be swapped onto another key's row.
pub struct KeySealer(SecretBox<[u8; 32]>);

impl KeySealer {
    pub fn new(key: [u8; 32]) -> Self {
        Self(SecretBox::new(Box::new(key)))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.0.expose_secret().into())
    }

    fn aad(kid: &str, alg: SigningAlg) -> Vec<u8> {
        format!("keygate-signing-key|{kid}|{alg}").into_bytes()
    }

    fn seal(&self, kid: &str, alg: SigningAlg, private_der: &[u8]) -> Result<Vec<u8>, SigningError> {
        let nonce = super::random_bytes::<24>();
        let aad = Self::aad(kid, alg);
        let ct = self
            .cipher()
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: private_der, aad: &aad })
            .map_err(|_| SigningError::Generate)?;
        Ok([nonce.as_slice(), &ct].concat())
    }

    fn open(&self, key: &SealedKey) -> Result<SecretBox<Vec<u8>>, SigningError> {
        if key.sealed_private.len() < 24 {
            return Err(SigningError::Malformed);
        }
        let (nonce, ct) = key.sealed_private.split_at(24);
        let aad = Self::aad(&key.kid, key.alg);
        self.cipher()
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .map(|pt| SecretBox::new(Box::new(pt)))
            .map_err(|_| SigningError::Unseal)
    }

    /// A new key pair, its private half already sealed. The kid is the RFC 7638
    /// thumbprint of the public key, so it is stable and needs no coordination.
    pub fn generate(&self, alg: SigningAlg) -> Result<SealedKey, SigningError> {
        let (private_der, public_key) = match alg {
            SigningAlg::Es256 => {
                let pair =
                    EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(|_| SigningError::Generate)?;
                let der = pair.to_pkcs8v1().map_err(|_| SigningError::Generate)?;
                (der.as_ref().to_vec(), pair.public_key().as_ref().to_vec())
            }
            SigningAlg::EdDsa => {
                let pair = Ed25519KeyPair::generate().map_err(|_| SigningError::Generate)?;
                let der = pair.to_pkcs8().map_err(|_| SigningError::Generate)?;
                (der.as_ref().to_vec(), pair.public_key().as_ref().to_vec())
            }
        };
        let kid = public_jwk(alg, &public_key, None)?.thumbprint(ThumbprintHash::SHA256);
        let sealed_private = self.seal(&kid, alg, &private_der)?;
        Ok(SealedKey { kid, alg, sealed_private, public_key })
    }
}

/// The public JWK for a raw public key (uncompressed P-256 point, or 32 Ed25519 bytes).
fn public_jwk(alg: SigningAlg, public_key: &[u8], kid: Option<&str>) -> Result<Jwk, SigningError> {
    let algorithm = match alg {
        SigningAlg::Es256 => {
            // SEC1 uncompressed: 0x04 || x (32 bytes) || y (32 bytes).
            let [4, xy @ ..] = public_key else {
                return Err(SigningError::Malformed);
            };
            if xy.len() != 64 {
                return Err(SigningError::Malformed);
            }
            AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
                key_type: EllipticCurveKeyType::EC,
                curve: EllipticCurve::P256,
                x: URL_SAFE_NO_PAD.encode(&xy[..32]),
                y: URL_SAFE_NO_PAD.encode(&xy[32..]),
            })
        }
        SigningAlg::EdDsa => {
            if public_key.len() != 32 {
                return Err(SigningError::Malformed);
            }
            AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x: URL_SAFE_NO_PAD.encode(public_key),
            })
        }
    };
    let key_algorithm = match alg {
        SigningAlg::Es256 => KeyAlgorithm::ES256,
        SigningAlg::EdDsa => KeyAlgorithm::EdDSA,
    };
    Ok(Jwk {
        common: CommonParameters {
            public_key_use: Some(PublicKeyUse::Signature),
            key_algorithm: Some(key_algorithm),
            key_id: kid.map(str::to_owned),
            ..Default::default()
        },
        algorithm,
    })
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    /// The API key's ref, not the key itself.
    pub sub: String,
    pub aud: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    /// Unique per token, so a single token can be revoked.
    pub jti: String,
    /// The account (tenant) the key belongs to.
    pub acc: String,
    /// The API key (the login identifier), for gateways that want to pass it upstream.
    pub api_key: String,
    /// RFC 9068's name for the same: the OAuth client the token was issued to. Absent from
    /// tokens issued before keygate followed RFC 9068 (and then not written).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_id: String,
    /// The granted scopes, space-separated (RFC 9068 §2.2.3); absent when there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

struct Verifier {
    alg: SigningAlg,
    key: DecodingKey,
    jwk: Jwk,
}

/// The active private key, parsed once. jsonwebtoken's `EncodingKey` keeps the PKCS#8
/// bytes and parses them again on every signature, a large share of a token's cost;
/// holding aws-lc-rs's key object saves that on every login.
enum Signer {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

/// The keys in use: one that signs, all that still verify. Built from the store at start-up
/// and rebuilt on rotation; private material lives only here, decrypted, and only for the
/// active key.
pub struct KeyRing {
    active_kid: String,
    signer: Signer,
    /// The base64url JOSE header every token of the active key carries: the same for all.
    encoded_header: String,
    verifiers: HashMap<String, Verifier>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing").field("active_kid", &self.active_kid).finish_non_exhaustive()
    }
}

impl KeyRing {
    /// `active` signs; `active` and every key in `verifying` verify.
    pub fn new(sealer: &KeySealer, active: &SealedKey, verifying: &[SealedKey]) -> Result<Self, SigningError> {
        let private = sealer.open(active)?;
        let signer = match active.alg {
            SigningAlg::Es256 => Signer::Es256(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, private.expose_secret())
                    .map_err(|_| SigningError::Malformed)?,
            ),
            SigningAlg::EdDsa => {
                Signer::EdDsa(Ed25519KeyPair::from_pkcs8(private.expose_secret()).map_err(|_| SigningError::Malformed)?)
            }
        };
        let mut header = Header::new(active.alg.jwt());
        header.kid = Some(active.kid.clone());
        // RFC 9068 §2.1: an access token says so, so it cannot pass for an ID token.
        header.typ = Some("at+jwt".to_owned());
        let encoded_header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).map_err(|_| SigningError::Malformed)?);
        let mut verifiers = HashMap::new();
        for key in std::iter::once(active).chain(verifying) {
            let jwk = public_jwk(key.alg, &key.public_key, Some(&key.kid))?;
            let decoding = DecodingKey::from_jwk(&jwk).map_err(|_| SigningError::Malformed)?;
            verifiers.insert(key.kid.clone(), Verifier { alg: key.alg, key: decoding, jwk });
        }
        Ok(Self { active_kid: active.kid.clone(), signer, encoded_header, verifiers })
    }

    pub fn active_kid(&self) -> &str {
        &self.active_kid
    }

    /// A compact JWS (RFC 7515 §7.1): header, claims and signature, each base64url.
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, SigningError> {
        let payload = serde_json::to_vec(claims).map_err(|_| SigningError::Sign)?;
        let mut token = String::with_capacity(self.encoded_header.len() + payload.len() * 4 / 3 + 92);
        token.push_str(&self.encoded_header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        // ES256 in JWS is the fixed-width r || s, which is what the _FIXED algorithm gives.
        let signature = match &self.signer {
            Signer::Es256(key) => {
                let signature = key.sign(&SystemRandom::new(), token.as_bytes()).map_err(|_| SigningError::Sign)?;
                low_s(signature.as_ref()).ok_or(SigningError::Sign)?.to_vec()
            }
            Signer::EdDsa(key) => key.sign(token.as_bytes()).as_ref().to_vec(),
        };
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        Ok(token)
    }

    /// Verifies signature, algorithm, `iss`, `aud`, and `exp` and `nbf` at `now` (with
    /// `leeway` seconds). The algorithm comes from our key, never from the token's header, so
    /// `none` and HS256-with-the-public-key tokens fail.
    ///
    /// ECDSA is malleable: the high-S twin (r, n − s) of a signature verifies as well as
    /// (r, s). Both are taken as the one token they sign (same claims, same `jti`), so
    /// revocation and expiry hold for either string. Refusing the twin would refuse half the
    /// tokens signed before keygate made only low-S signatures, for a whole token lifetime
    /// after an upgrade.
    pub fn verify(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
        leeway: u64,
        now: u64,
    ) -> Result<AccessClaims, Rejected> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejected::Invalid)?;
        let verifier = header.kid.as_deref().and_then(|kid| self.verifiers.get(kid)).ok_or(Rejected::Invalid)?;
        if header.alg != verifier.alg.jwt() {
            return Err(Rejected::Invalid);
        }
        let mut validation = Validation::new(verifier.alg.jwt());
        // jsonwebtoken would judge `exp` and `nbf` by the system clock: they are judged below,
        // at `now`, by the same rules (both claims still required).
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<AccessClaims>(token, &verifier.key, &validation)
            .map_err(|_| Rejected::Invalid)?
            .claims;
        if claims.exp < now.saturating_sub(leeway) {
            // Only a token whose signature verified is called expired: the difference tells a
            // forger nothing.
            return Err(Rejected::Expired);
        }
        if claims.nbf > now.saturating_add(leeway) {
            return Err(Rejected::Invalid);
        }
        Ok(claims)
    }

    /// Whether `token` names, in a well-formed header, a key this ring does not hold: the one
    /// failure a reload from the store can cure (another replica, or the CLI, rotated).
    pub fn is_unknown_kid(&self, token: &str) -> bool {
        jsonwebtoken::decode_header(token)
            .ok()
            .and_then(|h| h.kid)
            .is_some_and(|kid| !self.verifiers.contains_key(&kid))
    }

    /// The kids this ring verifies, sorted.
    pub fn kids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.verifiers.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }

    /// The public keys, for `/.well-known/jwks.json`.
    pub fn jwks(&self) -> JwkSet {
        let mut keys: Vec<Jwk> = self.verifiers.values().map(|v| v.jwk.clone()).collect();
        keys.sort_by(|a, b| a.common.key_id.cmp(&b.common.key_id));
        JwkSet { keys }
    }
}

/// Why [`KeyRing::verify`] refused a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Not a token of ours, or not one for here or for now: malformed, unknown kid, wrong
    /// algorithm, bad signature, another issuer or audience, not yet valid.
    Invalid,
    /// Ours and well signed, but past its `exp`.
    Expired,
}

/// The low-S form of a fixed-width P-256 signature r || s: itself when s ≤ n/2, else
/// r || n − s, the other signature of the same message (ECDSA is malleable in s; aws-lc
/// makes either). `None` for anything that is not 64 bytes with r and s in range.
fn low_s(signature: &[u8]) -> Option<[u8; 64]> {
    let parsed = p256::ecdsa::Signature::from_slice(signature).ok()?;
    Some(parsed.normalize_s().unwrap_or(parsed).to_bytes().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: u64) -> AccessClaims {
        AccessClaims {
            iss: "https://issuer".into(),
            sub: "ref".into(),
            aud: "api".into(),
            iat: now,
            nbf: now,
            exp: now + 60,
            jti: "j".into(),
            acc: "a".into(),
            api_key: "K".into(),
            client_id: "46SQZ49LT100U2QWQ3SI".into(),
            scope: None,
        }
    }

    const NOW: u64 = 1_750_000_000;

    #[test]
    fn sign_and_verify_each_algorithm() {
        let sealer = KeySealer::new([9; 32]);
        for alg in [SigningAlg::Es256, SigningAlg::EdDsa] {
            let key = sealer.generate(alg).unwrap();
            let ring = KeyRing::new(&sealer, &key, &[]).unwrap();
            let token = ring.sign(&claims(NOW)).unwrap();
            assert_eq!(ring.verify(&token, "https://issuer", "api", 0, NOW), Ok(claims_of(&token)));
            assert!(ring.verify(&token, "https://other", "api", 0, NOW).is_err());
            assert!(ring.verify(&token, "https://issuer", "other", 0, NOW).is_err());
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.kid.as_deref(), Some(key.kid.as_str()));
            assert_eq!(header.alg, alg.jwt());
        }
    }

    #[test]
    fn expiry_and_not_before_are_judged_at_the_time_given_with_the_leeway() {
        let sealer = KeySealer::new([8; 32]);
        let ring = KeyRing::new(&sealer, &sealer.generate(SigningAlg::Es256).unwrap(), &[]).unwrap();
        // Valid from NOW (nbf) to NOW + 60 (exp) inclusive.
        let token = ring.sign(&claims(NOW)).unwrap();
        let at = |now: u64, leeway: u64| ring.verify(&token, "https://issuer", "api", leeway, now).is_ok();
        assert!(at(NOW, 0) && at(NOW + 60, 0));
        assert!(!at(NOW + 61, 0), "expired");
        assert_eq!(ring.verify(&token, "https://issuer", "api", 0, NOW + 61), Err(Rejected::Expired));
        assert_eq!(ring.verify(&token, "https://issuer", "api", 0, NOW - 1), Err(Rejected::Invalid));
        assert!(!at(NOW - 1, 0), "not yet valid");
        assert!(at(NOW + 70, 10) && !at(NOW + 71, 10));
        assert!(at(NOW - 10, 10) && !at(NOW - 11, 10));
    }

    fn claims_of(token: &str) -> AccessClaims {
        let payload = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    }

    /// (r, n − s) for a token's signature r || s: the same token under another string.
    fn twin(token: &str) -> String {
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let signature = p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(signature).unwrap()).unwrap();
        let (r, s) = signature.split_scalars();
        let twin = p256::ecdsa::Signature::from_scalars(r, -s).unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(twin.to_bytes()))
    }

    #[test]
    fn es256_signatures_are_low_s_and_their_high_s_twins_are_the_same_token() {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
        let sealer = KeySealer::new([4; 32]);
        let key = sealer.generate(SigningAlg::Es256).unwrap();
        let ring = KeyRing::new(&sealer, &key, &[]).unwrap();
        let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &key.public_key);
        // aws-lc draws s high about half the time: 64 signatures all low by chance is 2^-64.
        for _ in 0..64 {
            let token = ring.sign(&claims(NOW)).unwrap();
            let signature = URL_SAFE_NO_PAD.decode(token.rsplit('.').next().unwrap()).unwrap();
            let parsed = p256::ecdsa::Signature::from_slice(&signature).unwrap();
            assert!(parsed.normalize_s().is_none(), "a high-S signature was issued");
            let claims = ring.verify(&token, "https://issuer", "api", 0, NOW).unwrap();

            let twin = twin(&token);
            let (signed, twin_signature) = twin.rsplit_once('.').unwrap();
            // A genuine signature of the same claims, which any verifier accepts, and we take
            // as the same token.
            public.verify(signed.as_bytes(), &URL_SAFE_NO_PAD.decode(twin_signature).unwrap()).unwrap();
            assert_eq!(ring.verify(&twin, "https://issuer", "api", 0, NOW).unwrap().jti, claims.jti);
        }
    }

    #[test]
    fn sealed_keys_need_the_right_key_and_row() {
        let sealer = KeySealer::new([1; 32]);
        let key = sealer.generate(SigningAlg::Es256).unwrap();
        assert!(KeyRing::new(&KeySealer::new([2; 32]), &key, &[]).is_err());
        let mut moved = key.clone();
        moved.kid = "another".into();
        assert!(KeyRing::new(&sealer, &moved, &[]).is_err());
    }

    #[test]
    fn unknown_kids_are_told_apart_from_garbage() {
        let sealer = KeySealer::new([3; 32]);
        let old = sealer.generate(SigningAlg::Es256).unwrap();
        let new = sealer.generate(SigningAlg::Es256).unwrap();
        let old_ring = KeyRing::new(&sealer, &old, &[]).unwrap();
        let new_ring = KeyRing::new(&sealer, &new, std::slice::from_ref(&old)).unwrap();
        let token = new_ring.sign(&claims(NOW)).unwrap();
        assert!(old_ring.is_unknown_kid(&token));
        assert!(!new_ring.is_unknown_kid(&token));
        assert!(!old_ring.is_unknown_kid("not a token"));
        assert_eq!(new_ring.kids().len(), 2);
    }

    #[test]
    fn jwks_has_only_public_parts() {
        let sealer = KeySealer::new([1; 32]);
        let key = sealer.generate(SigningAlg::Es256).unwrap();
        let ring = KeyRing::new(&sealer, &key, &[]).unwrap();
        let json = serde_json::to_value(ring.jwks()).unwrap();
        let k = &json["keys"][0];
        assert_eq!(k["kid"], key.kid.as_str());
        assert_eq!(k["alg"], "ES256");
        assert_eq!(k["use"], "sig");
        assert!(k.get("d").is_none());
    }
}
