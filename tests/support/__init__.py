"""What the tests share: the real servers they start on loopback (`clamd`, `dovecot`,
`postgres`), the two test organisations (`parties`), the spool back ends the end-to-end
tests run on (`backends`), Digg's schemas (`digg`, `domibus_xsd`), the e-mail corpus
(`mailcorpus`), xmlsec1 and a stopped process's end (`processes`)."""
