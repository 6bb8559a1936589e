"""The sandbox's organisations as the tests address them (sdk_bridge.lab.sandbox.federation
names them so): their ids, A's registrator sending, and B's registrator as A's mail
reaches it."""

ORG_A, ORG_B = "0203:a.sandbox.test", "0203:b.sandbox.test"
FROM_A = "registrator@a.sandbox.test"
FROM_B = "registrator@b.sandbox.test"
TO_B = "registrator@b.sandbox.test.sdk.a.sandbox.test"
