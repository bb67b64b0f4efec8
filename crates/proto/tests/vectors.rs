//! Test vectors printed in docs/PROTOCOL.md ("Test vectors"). Ed25519 is
//! deterministic, so fixed keys, nonces and Ping payload give fixed bytes.
//! Run with `--nocapture` to print them.

use std::sync::Arc;
use std::time::Instant;

use mmogit_identity::Identity;
use mmogit_proto::{
    compute_session_id, signed_bytes, Event, MsgType, Role, Session, SessionConfig,
};

struct FillRng(u8);
impl rand::RngCore for FillRng {
    fn next_u32(&mut self) -> u32 {
        u32::from_ne_bytes([self.0; 4])
    }
    fn next_u64(&mut self) -> u64 {
        u64::from_ne_bytes([self.0; 8])
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.fill(self.0)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        dest.fill(self.0);
        Ok(())
    }
}

const I_HELLO: &str = "000001b87b226d73675f74797065223a2248656c6c6f222c227061796c6f6164223a2265794a77636d393062324e7662434936496d31746232647064434973496e5a6c636e4e706232357a496a70624d563073496e4231596d746c65534936496a68684f44686c4d32526b4e7a51774f5759784f54566d5a4455795a4749795a444e6a596d45315a446379593245324e7a4135596d59785a446b304d544978596d597a4e7a51344f444178596a51775a6a5a6d4e574d694c434a756232356a5a534936496b565352564a46556b565352564a46556b565352564a46556b565352564a46556b565352564a46556b565352564a46556b565352564a46556b5539496977695957646c626e51694f694a746257396e615851764d4334784c6a41694c434a7361584e305a5735666347397964434936626e5673624377695932467759574a7062476c306157567a496a70625858303d222c227369676e6174757265223a223066774233586541797654774932744965746d756434626b686c30493249656b4f2f372f63453749477a464673496f6254363076746c38385033306c3654414f382f397867762b387576487036614136656e376941673d3d227d";
const A_HELLO: &str = "000001b87b226d73675f74797065223a2248656c6c6f222c227061796c6f6164223a2265794a77636d393062324e7662434936496d31746232647064434973496e5a6c636e4e706232357a496a70624d563073496e4231596d746c65534936496a67784d7a6b334e7a426c595467335a4445334e5759314e6d457a4e5451324e6d4d7a4e474d335a574e6a593249345a4468684f5446694e47566c4d7a64684d6a566b5a6a59775a6a56694f475a6a4f57497a4f5451694c434a756232356a5a534936496b6c7053576c4a61556c7053576c4a61556c7053576c4a61556c7053576c4a61556c7053576c4a61556c7053576c4a61556c7053576c4a61556b39496977695957646c626e51694f694a746257396e615851764d4334784c6a41694c434a7361584e305a57356663473979644349364e7a51794d4377695932467759574a7062476c306157567a496a70625858303d222c227369676e6174757265223a223952307571554873417979553972546e79792f66697856366e38684a766c4850794d324d3957706d4c3055724d6b393756734631696249704937334c787455564630594843685533342b50754b6b41307569767041513d3d227d";
const SESSION_ID: &str = "d5add9a6003564396a1b14fec10f8f3058ca070f63c7ecbba7cf7ac697eb3b7a";
const PING_SIGNED: &str = "6d6d6f6769742d6d73672d763100d5add9a6003564396a1b14fec10f8f3058ca070f63c7ecbba7cf7ac697eb3b7a0100000000000000000000000450696e67000000203333333333333333333333333333333333333333333333333333333333333333";
const PING_SIG: &str = "23aa882563bd13711c9da6cfb7ef7c3107b7f0c1e09dd019c75c6db9493d3f7fb94d25305071072b0eb2b5410e1790127a7faf4a01f74e58cca44f5572e60601";
const PING_FRAME: &str = "000000b37b226d73675f74797065223a2250696e67222c227061796c6f6164223a224d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d3d222c227369676e6174757265223a22493671494a574f39453345636e616250742b39384d516533384d48676e64415a7831787475556b3950332b3554535577554845484b7736797455454f46354153656e2b7653674833546c6a4d704539566375594741513d3d227d";
const PONG_FRAME: &str = "000000b37b226d73675f74797065223a22506f6e67222c227061796c6f6164223a224d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d7a4d3d222c227369676e6174757265223a226f355a5439735a64354b4f78674c35515035586f786865557a4a374c31386152675a44424a57745157362f61565142484d5453585a43696e4d6e72476c4d6e45524637742f6e436c72676b786856514c3056465641413d3d227d";

fn cfg(port: Option<u16>) -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        versions: vec![1],
        agent: "mmogit/0.1.0".into(),
        listen_port: port,
        capabilities: vec![],
        ..SessionConfig::default()
    })
}

#[test]
fn handshake_vectors() {
    let now = Instant::now();
    let ik = Arc::new(Identity::from_secret_bytes(&[1u8; 32]));
    let ak = Arc::new(Identity::from_secret_bytes(&[2u8; 32]));
    let mut i = Session::initiator(
        ik.clone(),
        cfg(None),
        Some(ak.public_key()),
        [0x11; 32],
        Box::new(FillRng(0x33)),
        now,
    );
    let mut a = Session::acceptor(
        ak.clone(),
        cfg(Some(7420)),
        [0x22; 32],
        Box::new(FillRng(0x44)),
        now,
    );
    let i_hello = i.poll_transmit().unwrap();
    let a_hello = a.poll_transmit().unwrap();
    a.handle_input(now, &i_hello).unwrap();
    i.handle_input(now, &a_hello).unwrap();
    let ping = i.poll_transmit().unwrap();
    a.handle_input(now, &ping).unwrap();
    assert!(matches!(
        a.poll_event(),
        Some(Event::AuthorizationRequired(_))
    ));
    a.accept(now).unwrap();
    let pong = a.poll_transmit().unwrap();
    i.handle_input(now, &pong).unwrap();
    assert!(i.is_established() && a.is_established());

    let sid = compute_session_id(&i_hello_payload(&i_hello), &i_hello_payload(&a_hello));
    assert_eq!(i.session_id(), Some(&sid));
    let signed = signed_bytes(&sid, Role::Initiator, 0, MsgType::Ping, &[0x33; 32]);
    let sig = ik.sign(&signed);

    println!("initiator public key {}", ik.public_key());
    println!("acceptor public key  {}", ak.public_key());
    println!("I_HELLO {}", hex::encode(&i_hello));
    println!("I_HELLO json {}", String::from_utf8_lossy(&i_hello[4..]));
    println!(
        "I_HELLO payload {}",
        String::from_utf8_lossy(&i_hello_payload(&i_hello))
    );
    println!("A_HELLO {}", hex::encode(&a_hello));
    println!(
        "A_HELLO payload {}",
        String::from_utf8_lossy(&i_hello_payload(&a_hello))
    );
    println!("SESSION_ID {}", hex::encode(sid));
    println!("PING_SIGNED {}", hex::encode(&signed));
    println!("PING_SIG {}", sig.to_hex());
    println!("PING_FRAME {}", hex::encode(&ping));
    println!("PING json {}", String::from_utf8_lossy(&ping[4..]));
    println!("PONG_FRAME {}", hex::encode(&pong));

    assert_eq!(hex::encode(&i_hello), I_HELLO);
    assert_eq!(hex::encode(&a_hello), A_HELLO);
    assert_eq!(hex::encode(sid), SESSION_ID);
    assert_eq!(hex::encode(&signed), PING_SIGNED);
    assert_eq!(sig.to_hex(), PING_SIG);
    assert_eq!(hex::encode(&ping), PING_FRAME);
    assert_eq!(hex::encode(&pong), PONG_FRAME);
}

/// The payload bytes (base64-decoded) of a Hello frame.
fn i_hello_payload(frame: &[u8]) -> Vec<u8> {
    mmogit_proto::RawMessage::from_body(&frame[4..])
        .unwrap()
        .payload
}
