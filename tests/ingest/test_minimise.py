"""Tests for PII detection and minimisation: a labelled corpus, the three policies, properties."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from silolearn.errors import ConfigError
from silolearn.ingest.minimise import (
    Finding,
    MinimisationPolicy,
    MinimisationResult,
    Minimiser,
    PiiKind,
    detect,
)

# Each case marks its PII inline as [[kind:value]]; stripping the markers gives the text and the
# exact spans expected. A case without markers is a hard negative: nothing may be found in it.
EMAIL_CASES = [
    "Send your questions to [[email:askhealth@health.com]] before Friday.",
    "For press enquiries email [[email:press.office@bbc.co.uk]] or call the newsroom.",
    "Tips can be sent to [[email:tips+ukraine@nytimes.com]], where a reporter reads every one.",
    "Contact: [[email:Jane.Doe@Example.org]]",
    "RT @healthmag: Share your story at [[email:tellyourstory@health.com]]! #wellness",
    "Reach me (<[[email:m.okafor@lagos-times.ng]]>) if you have the documents.",
    "mailto:[[email:support@acme-widgets.io]]?subject=refund",
    "Applications go to [[email:hr_department@city.gov.uk]]; late entries are not accepted.",
    "Her address, [[email:k.tanaka1987@yahoo.co.jp]], appeared in the leaked spreadsheet.",
    "Email [[email:letters@theguardian.com]] and [[email:corrections@theguardian.com]] separately.",
    "The author can be reached at [[email:ROBERT.SMITH@LAW-FIRM.COM]].",
    "Questions about the recall? Write to [[email:recalls%dept@fda.hhs.gov]]",
    "Forwarded from [[email:noreply@notifications.github.com]] at 09:14",
    "cc: [[email:a.b.c.d@sub.domain.example.net]], [[email:x-y@z.io]]",
    "Readers may email [[email:film.critic@variety.com]] with their own top ten lists.",
    "Send CVs to [[email:jobs@startup.ai]] - we reply to every applicant.",
    "I emailed [[email:j.smith_99@hotmail.com]] twice and got no answer, 1/10 would not recommend",
    "the whistleblower wrote from [[email:anon.source@protonmail.com]] on 3 March 2016",
    "Contact our data protection officer at [[email:dpo@bank-of-example.eu]].",
    '"Write to me at [[email:santa@northpole.org]]," said the mall Santa, 64.',
    "Tickets: [[email:boxoffice@royalopera.org.uk]] / [[phone:020 7304 4000]]",
    "[[email:info@cafe-du-monde.fr]] is the only way to book a table.",
    "Winners will be notified from [[email:contest2017@radio1.com]] by Monday.",
    "Email [[email:elizabeth.landau@turner.com]] if you'd like to share your experience.",
    "my new email is [[email:lisa.m.brown@gmail.com]] pls update ur contacts",
    "DM me or email [[email:bookings.djkane@outlook.com]] for gigs",
    "(contact: [[email:editor@local-news24.com]])",
    "Staff were told to forward phishing mails to [[email:phishing@company.co.za]].",
    "Ask the expert: [[email:drnancy@nbcuni.com]] #AskDrNancy",
    "Email: [[email:hzlevine@aol.com]]",
    "Submissions: [[email:poetry.submissions@the-review.org]]. Deadline is 31/12/2017.",
    "The scam used [[email:security-alert@paypa1-support.com]] to fool users.",
    "Send a photo of your pet to [[email:pets@dailymail.co.uk]] for a chance to win £500.",
    "He signed off as [[email:dave.r@fastmail.fm]] and vanished.",
    "Fan mail: [[email:fanclub@bandname.music]]",
    "Ticket issues? [[email:help@ticketmaster.com]] (24/7)",
    "Accounts payable: [[email:ap.invoices@supplier123.de]], VAT DE123456789",
    "Email [[email:ana.lima@globo.com.br]] or [[email:redacao@folha.com.br]] with corrections.",
    "Interview requests should go to [[email:media-relations@un.org]].",
    "[[email:first.last@university.edu]] wrote the paper with two co-authors.",
    "Please contact [[email:K.Wong@hku.hk]] regarding the 2018 conference.",
    "UPDATE: the correct address is [[email:feedback@bbc.co.uk]], not the one in the video.",
    "RT/E:[[email:marissae@kff.org]]",
]

PHONE_CASES = [
    "Call [[phone:+1 (415) 555-2671]] to reserve a seat.",
    "The hotline, [[phone:415-555-2671]], is open until 9pm.",
    "Reach the clinic on [[phone:(415) 555 2671]] during office hours.",
    "Our London office: [[phone:+44 20 7946 0958]].",
    "Phone [[phone:020 7946 0958]] for tickets.",
    "Berlin desk [[phone:+49 30 901820]], ask for Klaus.",
    "Appelez le [[phone:06 12 34 56 78]] avant 18h.",
    "If you need help, call [[phone:1-800-273-8255]] for the National Suicide Prevention Lifeline.",
    "Police asked anyone with information to call [[phone:719-390-5555]].",
    "Call [[phone:703.746.4444]] or text 911 if voice calls fail.",
    "WhatsApp: [[phone:+44 (0)7525 900971]] Twitter: @BBC_HaveYourSay",
    "Outside the UK dial [[phone:+44 7624 800 100]].",
    "Contact Kilkenny Garda Station on [[phone:056-777-5000]].",
    "Book online or call [[phone:+35318868989]]. #StormDoris",
    "Customers can phone [[phone:0800 028 9276]] in the UK.",
    "Tel: [[phone:+33 1 42 68 53 00]] - fax: [[phone:+33 1 42 68 53 01]]",
    "Toll free: [[phone:1 (800) 555-0199]]",
    "Dial [[phone:+1-202-456-1111]] to leave a comment for the White House.",
    "Mobile [[phone:07700 900123]], landline [[phone:0161 496 0000]].",
    "Ring [[phone:01632 960 001]] after 6pm",
    "Nederland: bel [[phone:020 123 4567]] of [[phone:06-12345678]].",
    "Madrid office: [[phone:+34 912 345 678]]",
    "Roma: [[phone:+39 06 1234 5678]], Milano: [[phone:+39 02 1234 5678]]",
    "Stockholm [[phone:+46 8 123 456 78]]",
    "Zurich [[phone:+41 44 668 18 00]] (reception)",
    "Wien: [[phone:+43 1 531 15 4000]]",
    "Warsaw [[phone:+48 22 123 45 67]]",
    "Copenhagen [[phone:+45 33 12 34 56]], Oslo [[phone:+47 22 12 34 56]]",
    "Lisboa [[phone:+351 21 123 4567]]",
    "Brussels [[phone:+32 2 123 45 67]]",
    "Dublin office [[phone:+353 1 234 5678]]",
    "Call us free: [[phone:(800) 555-0123]]",
    "Text [[phone:+1.248.840.8368]] for details",
    "The tip line is [[phone:844-459-5786]]. Tips can also be emailed.",
    "Sheriff's office: [[phone:(719) 390-5555]] ext. 4",
    "Paris: [[phone:01 23 45 67 89]]; Lyon: [[phone:04.72.10.30.30]]",
    "Anyone with information should call Crimestoppers on [[phone:0800 555 111]].",
    "Kontakt: [[phone:030 12345678]]",
    "Mobil [[phone:0171 1234567]]",
    "Reach her at [[phone:212.555.0147]] or at the office.",
    "Call [[phone:+1 855 987 4275]] for packages",
    "Customer care [[phone:+91 22 6666 5555]]",
    "Cape Town: [[phone:+27 79 051 8558]]",
    "Tel. [[phone:+886-2-2226-0126]] ext 8300",
    "call [[phone:866-395-5665]] now!!",
    "Freephone [[phone:0808 800 5000]] (NSPCC)",
    "Call [[phone:+44 20 7946 0958]] 24 hours a day.",
    "Bahamas [[phone:+242 373 8956]]/[[phone:+1 800 992 3483]]; dives from $109",
    "Call the Nenagh station on [[phone:067 50450]] or Mayfield on [[phone:021-455 8510]].",
    "Stockholm office: [[phone:08-123 456 78]]",
    "Children can call Childline on [[phone:0800 1111]] at any time.",
    "New number: [[phone:415-555 2671]]",
]

CARD_CASES = [
    "Paid with card [[card:4111 1111 1111 1111]], expiry 12/25.",
    "My Visa [[card:4012888888881881]] was charged twice!!",
    "Test card: [[card:4222222222222]]",
    "Use [[card:4242-4242-4242-4242]] in the sandbox.",
    "MC [[card:5555 5555 5555 4444]] declined at 14:02",
    "refund to [[card:5105105105105100]] pls",
    "Amex [[card:3782 822463 10005]] / CVV 1234",
    "Card number [[card:371449635398431]] was read out on the call.",
    "Discover [[card:6011-1111-1111-1117]]",
    "[[card:6011 0009 9013 9424]] exp 08/19",
    "JCB [[card:3530111333300000]]",
    "JCB card [[card:3566 0020 2036 0505]] used in Osaka.",
    "Diners Club [[card:3056 9309 0259 04]]",
    "Diners [[card:38520000023237]]",
    "Mastercard 2-series: [[card:2223 0031 2200 3222]]",
    "UnionPay [[card:6200000000000005]]",
    "Her card, [[card:4000 0566 5566 5556]], was stolen on the train.",
    "[[card:5200 8282 8282 8210]] is a debit card",
    "Cards [[card:4526 0181 5908 3012]] and [[card:4661-3186-0913-9090]] were both flagged.",
    "old 13-digit Visa [[card:4960308246280]]",
    "19-digit Visa: [[card:4194 8219 9351 8190 939]]",
    "charge [[card:5178 6579 7543 2313]] for the deposit",
    "card no. [[card:5394875749118624]]",
    "[[card:5552-7601-8955-5972]] (exp 03/21)",
    "The new Mastercard range: [[card:2221 9711 4710 4971]] and [[card:2720465075291708]].",
    "She read out [[card:2500 3423 6671 2765]] over the phone, which is how it leaked.",
    "Amex [[card:3484 268465 63219]], security code on the front",
    "amex: [[card:372233079244023]]",
    "Discover card [[card:6011 6859 9528 9073]]",
    "Pay with [[card:6586-6661-7603-1372]] or cash",
    "[[card:6442159010928155]]",
    "JCB [[card:3530 9013 9624 5955]] issued in Tokyo",
    "JCB 19 digits: [[card:3589 7117 7774 1215 471]]",
    "Diners [[card:36280385280843]] and [[card:3001 485253 8888]]",
    "UnionPay [[card:6253 9336 3387 5003]], also [[card:6247439575513137359]]",
    "Maestro [[card:6759 3799 0751 1636]]",
    "Maestro card [[card:507265167612220294]]",
    "Card: [[card:4729 9752 8820 0186]] CVV 123",
    "visa [[card:4263304348395484]] exp 11/22",
    "Maestro [[card:5620 5798 6828 2882]] was cloned at an ATM.",
    "The fraudster tried [[card:4539148803436467]], [[card:4929000000006]] and more.",
    "Test Visa [[card:4716123456789012]] and Maestro [[card:5019717010103742]]",
]

IBAN_CASES = [
    "Please transfer the deposit to [[iban:GB82 WEST 1234 5698 7654 32]] by Friday.",
    "IBAN: [[iban:DE89 3704 0044 0532 0130 00]]",
    "Virement sur [[iban:FR14 2004 1010 0505 0001 3M02 606]] avant le 5.",
    "Rekening [[iban:NL91 ABNA 0417 1643 00]] t.n.v. Stichting Vrienden",
    "Cuenta: [[iban:ES91 2100 0418 4502 0005 1332]]",
    "Bonifico su [[iban:IT60 X054 2811 1010 0000 0123 456]]",
    "Belgian account [[iban:BE68 5390 0754 7034]]",
    "Swiss account [[iban:CH93 0076 2011 6238 5295 7]]",
    "Konto [[iban:AT61 1904 3002 3457 3201]]",
    "Irish account [[iban:IE29 AIBK 9311 5212 3456 78]]",
    "Numer konta: [[iban:PL61 1090 1014 0000 0712 1981 2874]]",
    "Swedish IBAN [[iban:SE45 5000 0000 0583 9825 7466]]",
    "Norwegian IBAN [[iban:NO93 8601 1117 947]]",
    "Danish IBAN [[iban:DK50 0040 0440 1162 43]]",
    "Finnish IBAN [[iban:FI21 1234 5600 0007 85]]",
    "Portuguese IBAN [[iban:PT50 0002 0123 1234 5678 9015 4]]",
    "Luxembourg IBAN [[iban:LU28 0019 4006 4475 0000]]",
    "Electronic form [[iban:DE17072902227918058887]] works too.",
    "Refund to [[iban:DE23 1803 3401 8780 1759 89]], thanks",
    "UK payee [[iban:GB83QGWI78878384837261]] (sort code on file)",
    "Pay rent into [[iban:GB47 MOKC 3613 4125 2427 31]] on the 1st of each month.",
    "[[iban:FR5967232686563551505877065]]",
    "Le loyer va sur [[iban:FR41 8948 1131 1440 2426 4628 897]].",
    "bank [[iban:NL67WKCI0261401419]] and [[iban:NL45 HCID 7058 6492 08]]",
    "Spanish accounts [[iban:ES5031240234483478245040]], [[iban:ES51 0088 3873 7167 8684 3353]]",
    "IT: [[iban:IT02 W265 0201 4620 1684 9340 722]] / [[iban:IT48I7045585304352056174833]]",
    "BE: [[iban:BE59801412690604]] and [[iban:BE63 4319 8296 5724]]",
    "CH accounts [[iban:CH3192086828890931002]] + [[iban:CH84 5167 8008 3740 7188 1]]",
    "AT: [[iban:AT548174143337761740]], [[iban:AT54 9319 2544 9920 7074]]",
    "IE: [[iban:IE73 VDWG 7484 7771 8341 70]] or [[iban:IE79JOCQ74633191284529]]",
    "Przelew na [[iban:PL78 8415 3776 0207 7642 6565 1505]]",
    "PL [[iban:PL92561304451669156404104234]]",
    "Konto [[iban:SE37 6853 5606 8831 0679 2470]] eller [[iban:SE2482276544446347861221]]",
    "NO: [[iban:NO7338783757628]], [[iban:NO18 3312 5815 354]]",
    "DK: [[iban:DK48 9306 6683 6450 74]]; DK: [[iban:DK5995288314366764]]",
    "FI: [[iban:FI0902067970168773]] ja [[iban:FI27 1322 8171 8002 39]]",
    "PT: [[iban:PT37 0424 8611 1489 3643 9008 4]] e [[iban:PT26745378383064003761436]]",
    "LU: [[iban:LU72 5370 5656 3048 1373]], [[iban:LU604337344197923760]]",
    "Croatian account [[iban:HR17 9260 3092 6002 6751 1]] and [[iban:HR6425328704655721014]]",
    "Romanian IBAN [[iban:RO24 CLND 8365 4610 7358 7355]], also [[iban:RO95XPAU6360607104319554]]",
    "Czech: [[iban:CZ40 5904 5440 9103 1776 4672]] / [[iban:CZ8372042935575918362361]]",
    "Greek: [[iban:GR04 0788 5261 1491 3167 7232 679]]",
    "Send [[iban:GR8938144494544373233249351]] the invoice amount of EUR 1.130,00",
    "Wire to BE: [[iban:BE68 5390 0754 7034]] FROM account holder",
]

IP_CASES = [
    "Admin panel at http://[[ip:192.168.1.1]]/admin is still open.",
    "The request came from [[ip:10.0.0.138]] at 03:12.",
    "Gateway [[ip:172.16.254.1]] dropped packets all night.",
    "Set your DNS to [[ip:8.8.8.8]] or [[ip:1.1.1.1]].",
    "Login from [[ip:203.0.113.195]] (unrecognised device)",
    "Blocked [[ip:198.51.100.23]], [[ip:198.51.100.24]] and [[ip:198.51.100.25]].",
    "The edit was made from IP [[ip:81.2.69.160]], which resolves to a London ISP.",
    "Crawler [[ip:66.249.66.1]] hit the site 40,000 times.",
    "Server listening on [[ip:127.0.0.1]]:8080",
    "GitHub Pages uses [[ip:185.199.108.153]].",
    "example.com resolved to [[ip:93.184.216.34]] last year.",
    "CDN node [[ip:151.101.1.69]] served the page.",
    "Cloudflare address [[ip:104.16.132.229]] appears in the logs.",
    "Metadata service: [[ip:169.254.169.254]]",
    "CGNAT address [[ip:100.64.0.1]] was assigned to the router.",
    "Broadcast to [[ip:255.255.255.255]] failed.",
    "Connect to [[ip:192.168.0.10]]:22 with the key.",
    "IPv6 docs prefix: [[ip:2001:db8::1]]",
    "Full form [[ip:2001:0db8:85a3:0000:0000:8a2e:0370:7334]] in the config.",
    "Link-local [[ip:fe80::1ff:fe23:4567:890a]] on eth0",
    "Mapped address [[ip:::ffff:192.0.2.128]] in the access log",
    "Cloudflare DNS over IPv6: [[ip:2606:4700:4700::1111]]",
    "Google DNS [[ip:2001:4860:4860::8888]]",
    "Request from [[ip:2a00:1450:4009:81f::200e]] was throttled.",
    "ULA [[ip:fd12:3456:789a:1::1]] is reachable only inside the VPN.",
    "Written out: [[ip:2001:db8:0:0:1:0:0:1]].",
    "Upper case works: [[ip:2001:DB8::ABCD:12]]",
    "Bracketed URL http://[[[ip:2001:db8::42]]]:8080/status",
    "Two hosts: [[ip:10.1.2.3]] and [[ip:10.1.2.4]]",
    "The leaked list included [[ip:91.198.174.192]] and [[ip:208.80.154.224]].",
    "His home router, [[ip:86.12.205.77]], was exposed to the internet.",
    "Hacker used VPN exit node [[ip:185.220.101.4]] #infosec",
    "ssh root@[[ip:45.33.32.156]] worked with the default password",
    "Proxy [[ip:52.95.110.1]] returned 503.",
    "Office subnet starts at [[ip:192.0.2.1]]; printers at [[ip:192.0.2.200]].",
    "Traceroute hop 3: [[ip:62.115.123.45]] (12 ms)",
    "Her laptop had address [[ip:172.31.255.254]].",
    "Allowed: [[ip:2001:db8:abcd:12::]] only",
    "Peer [[ip:2001:db8:1::ab9:C0A8:102]] connected.",
    "DHCP gave out [[ip:10.10.10.10]] twice.",
    "Reverse DNS for [[ip:8.8.4.4]] is dns.google",
    "RT @netops: outage on [[ip:213.5.64.1]] resolved.",
]

NATIONAL_ID_CASES = [
    "Her Social Security number, [[national_id:078-05-1120]], was printed on the wallet card.",
    "SSN: [[national_id:219-09-9999]]",
    "Applicant SSN [[national_id:457-55-5462]] on file.",
    "The form listed [[national_id:536 22 1234]] as his social security number.",
    "ssn [[national_id:123-45-6789]] (do not share)",
    "Employee [[national_id:001-01-0001]] was terminated in 2016.",
    "SSNs [[national_id:212-67-4432]] and [[national_id:318-04-9921]] were exposed.",
    "My SSN is [[national_id:665-12-3456]] lol",
    "SSN [[national_id:899-99-9999]] passed the format check.",
    "[[national_id:401 32 7845]] - social security number of the deceased",
    "The leaked rows held [[national_id:523-41-8876]], [[national_id:610-23-0045]].",
    "Taxpayer ID [[national_id:287-65-4321]].",
    "W-2 shows SSN [[national_id:345-67-8901]] for 2016.",
    "Her SSN ([[national_id:772-18-3390]]) was used to open three accounts.",
    "The spreadsheet had SSN [[national_id:145 88 2301]] in column C.",
    "ssn: [[national_id:503-11-7744]]",
    "Patient SSN [[national_id:690-44-1209]], DOB 1971",
    "SSN [[national_id:234-56-7890]]; phone withheld",
    "Form SS-5 for [[national_id:432-10-9876]]",
    "Dependent SSN [[national_id:555-32-1098]] rejected by the IRS.",
    "NI number: [[national_id:AB123456C]]",
    "National Insurance number [[national_id:JG 10 37 62 A]]",
    "NINO [[national_id:CE 71 23 45 D]] on the payslip.",
    "His NI number, [[national_id:NA 12 34 56 B]], was on the letter.",
    "NI [[national_id:PZ987654A]]",
    "[[national_id:HR 01 23 45 C]] is the claimant's National Insurance number.",
    "New starter NI: [[national_id:WL 44 55 66 D]]",
    "NI no. [[national_id:SH123456A]]",
    "NINOs [[national_id:KR 55 66 77 B]] and [[national_id:TE 12 12 12 A]] were mixed up.",
    "Payroll shows NI number [[national_id:OE 22 33 44 C]].",
    "Claim ref with NI [[national_id:MA 98 76 54 D]]",
    "NI number [[national_id:YZ112233B]] for the pension.",
    "HMRC wrote to [[national_id:LP 54 32 10 A]] about the refund.",
    "Her National Insurance number is [[national_id:EH 11 22 33 C]].",
    "NI numbers [[national_id:BC012345D]], [[national_id:GA 76 54 32 A]]",
    "NI: [[national_id:WP 10 20 30 B]]",
    "[[national_id:RJ 45 67 89 A]] (National Insurance)",
    "NI [[national_id:CH 88 77 66 D]] was quoted on the call.",
    "SSN [[national_id:111-22-3333]] and NI [[national_id:ZY 65 43 21 C]]",
    "SSN [[national_id:820-11-4455]] appeared in the 2015 breach.",
]

NEGATIVE_CASES = [
    # years, dates and times
    "In 2017, the company reported record profits for the third year running.",
    "The treaty was signed on 2017/2/7 in Brussels.",
    "Published 2017-02-07, updated 2017-02-08 at 14:35.",
    "Der Vertrag wurde am 07.02.2017 unterzeichnet.",
    "Deadline: 02/07/2017 at 11:59pm ET.",
    "The match kicks off at 19:45 on 12.03.2017.",
    "Doors open 09.30-11.00 and 14.00-16.30.",
    "The film runs 2h 15m (135 minutes) and opens on 24 March 2017.",
    "The timer read 12:30:45 when the alarm went off.",
    "Between 1995-2005 the population doubled.",
    "Season 2016-17 was his best; 2017-18 his worst.",
    "Born 1 January 1970, died 31 December 2016.",
    "On 7 Feb 2017 at 10:05 GMT the vote was tied 50-50.",
    "The report covers 2010, 2011, 2012, 2013 and 2014.",
    "Expires 12/25, issued 01/20.",
    "Watch live from 20:00 to 22:30 BST.",
    "Meeting moved to 3.30pm on 14/03/2017.",
    "Q3 2016 revenue beat Q3 2015 by 12%.",
    "ISO week 2017-W06 started on 2017-02-06.",
    "The timestamp 2017-02-07T14:35:00Z was logged by the server.",
    # money and amounts
    "The house sold for $1,130,000 in March.",
    "Budget cut of £4.5bn announced, down from £5.1bn.",
    "Le budget atteint 1 130 000 euros cette année.",
    "Die Kosten betrugen 1.130.000 Euro.",
    "Shares rose 3.2% to $145.67 in early trading.",
    "The fine was €2 130 000 000, a record.",
    "Dow closes above 20,000 for the first time.",
    "Salaries range from $45,000-$60,000 per year.",
    "GDP grew 0.6% in the quarter, 1.8% year on year.",
    "The deal is worth 8 908 081 dollars.",
    "Tickets cost £12.50, £15.00 or £20.00.",
    "Population: 8 908 081 (2016 estimate).",
    "Exports fell to 130 000 000 tonnes in 2016.",
    "Oil traded at 52.37 then 51.90 a barrel.",
    "He earned 1 200 000 000 yen over 10 years.",
    "The settlement was 1,250,000,000 dollars.",
    "Prices: 4.99, 5.49, 6.99 and 9.99 euros.",
    "Interest rate held at 0.25 per cent.",
    "A 12.5% rise, or 125 000 extra visitors.",
    "The bill totals 1 000 000 000 000 won.",
    # scores and statistics
    "Golden State beat Cleveland 51-50 at half-time.",
    "Murray won 6-4 6-3 6-7 7-5 in the final.",
    "Chelsea lead 2-0 (1-0 at the break).",
    "Final score: 3-1, 2-2 on aggregate after 120 minutes.",
    "They play a 4-4-2 formation, switching to 4-2-3-1 later.",
    "The Senate voted 51-50 with Pence casting the deciding vote.",
    "He went 3 for 4 with 2 RBIs; the line score was 0 0 0 1 0 2 1 0 0.",
    "Box score: 0 1 0 0 2 0 0 3 0 - 6 10 1",
    "Record now 12-3-1 after the 110-102 win.",
    "Rated 4.5/5 by 12,345 critics.",
    "The vote was 218-213, a margin of five.",
    "Tied 6-6 in the tiebreak, 7-6 (7-4) eventually.",
    "They won 10-0, 8-1 and 7-2 in successive weeks.",
    "Poll: 48.2% vs 46.1%, margin of error 3.1 points.",
    "Quarter scores: 28-24, 21-30, 25-25, 30-19.",
    # version numbers and technical strings
    "Upgrade to version 1.2.3 before Friday.",
    "iOS 10.3.1 fixes the Wi-Fi bug.",
    "Section 1.2.3.4.5 of the manual explains it.",
    "Chrome 56.0.2924.87 is the current stable release.",
    "Running v2.0.0.1 on the build server.",
    "Python 3.6.0 was released on 2016-12-23.",
    "Kernel 4.9.0-1-amd64 boots fine.",
    "The IP 999.1.1.1 in the report is a typo.",
    "Octets such as 256.100.50.25 are not addresses.",
    "Build 10.0.14393 shipped with the Anniversary Update.",
    "The screen is 16:9 at 1920x1080, 60Hz.",
    "John 3:16 was on the banner again.",
    "Ratio of 3:2:1 for flour, water, fat.",
    "News :: Sport :: Weather",
    "C++ lets you write std::vector<int> and a::b in templates.",
    "Pin 1:2:3 of the connector",
    "Error 0x80070005 at 12:00:01:123",
    "The 2x2 grid icon is logo@2x.png in the repo.",
    "Twitter handle @user123 replied to @nytimes and @BBCBreaking.",
    "Ping me at user@localhost on the dev box.",
    "Email me at jane dot doe at example dot com.",
    "See foo@bar for the internal alias.",
    "CO2 emissions rose to 415.2 ppm.",
    "Coordinates 51.5074, -0.1278 mark central London.",
    "Flight MH17 was shot down in 2014; BA 2490 was diverted.",
    "FY21 EARNINGS WILL HAVE BEEN MUCH BETTER THAN EXPECTED",
    "MH17 REPORT FROM AMSTERDAM OUT TODAY",
    # URLs, handles and hashtags
    "It's not hard to get a little cardio in at home! @KristinMcGee http://ow.ly/KiDDJ",
    "Read more: https://twitter.com/nytimes/status/572345678901234567",
    "See https://twitter.com/i/web/status/1234567890123456789 for the thread.",
    "Watch https://www.youtube.com/watch?v=dQw4w9WgXcQ now",
    "http://abcnews.go.com/Politics/story?id=45310061",
    "https://www.bbc.co.uk/news/uk-politics-38841659",
    "15 myths about cellulite: http://ow.ly/KiIY0 #health",
    "Full story: http://nyti.ms/1dsw745 via @nytimes",
    "Link: https://t.co/AbC123xyz #2017 #G20",
    "pic.twitter.com/Qf3M4sgaeY",
    "https://example.com/orders/4111111111111111/receipt",
    "https://example.com/u/415-555-2671/profile",
    "Visit www.example.org/2017/02/07/story-123456789.html today.",
    "#throwback to 2007 #TBT #100DaysOfCode",
    "RT @CNN: 5 things to know for March 3: http://cnn.it/2lKxYz1",
    "Tweet id 1234567890123456789 was deleted.",
    # identifiers that fail their checks
    "Order 4000 1234 5678 9010 shipped today.",
    "Reference 5500 1234 1234 1234 is on the invoice.",
    "Tracking no. 4400 1234 5678 9012",
    "The card 4111 1111 1111 1112 was rejected as invalid.",
    "Barcode 4006381333931 on the box.",
    "UPS tracking 1Z999AA10123456784 shows it in Leeds.",
    "USPS 9400 1000 0000 0000 0000 00 was delivered.",
    "Parcel 7489 1234 5678 9012 is delayed.",
    "Account GB82 WEST 1234 5698 7654 33 does not exist.",
    "IBAN DE89 3704 0044 0532 0130 01 failed the bank's check.",
    "NL91 ABNA 0417 1643 01 bounced.",
    "DE8664388317010737504 is too short for Germany.",
    "GB86HDBG9931582794019 has the wrong length.",
    "NL15WTLG05520340930 was rejected.",
    "The SSN 000-12-3456 is never issued.",
    "666-45-1234 cannot be a Social Security number.",
    "Numbers like 912-34-5678 are taxpayer IDs, not SSNs.",
    "Group 00 in 123-00-4567 is invalid.",
    "Serial 0000 in 123-45-0000 is invalid.",
    "The file just says 123456789 in that column.",
    "QQ 12 34 56 C is the example on the HMRC form.",
    "GB123456A is not a valid NI prefix.",
    "AB123456E has an invalid suffix.",
    "DA 12 34 56 A starts with a letter HMRC never uses.",
    "AO123456A has O as its second letter.",
    "ISBN 978-0-306-40615-7 and 978-3-16-148410-0.",
    "Case No. 2:17-cv-00141 was filed in Seattle.",
    "Invoice INV-2017-000123 is overdue.",
    "Room 101, building 4, floor 3.",
    "Serial number 04-12-2017-0098 on the label.",
    "Patent US 9,123,456 B2 was granted.",
    "Part no. 100-200-3000 is out of stock.",
    "Train 12 034 leaves from platform 9.",
    "Model 0-60 in 3.2 seconds.",
    # film reviews and chatty tweets
    "Amitabh Bachchan is superb in this 1987 classic; 4 stars out of 5.",
    "A 2-hour-15-minute slog that feels like 3.",
    "Part 2 of 3: the sequel (2016) is better than the original (2014).",
    "Top 10 films of 2016: #1 Moonlight, #2 La La Land.",
    "It grossed $1.2 billion worldwide, the 3rd highest of all time.",
    "I gave it 7/10, my wife gave it 9/10.",
    "The 1,000th episode aired on 3/4/2017.",
    "24/7 coverage starts at 6am.",
    "Best of 3, then best of 5, then 7.",
    "Lost 5 lbs in 2 weeks with these 13 foods!",
    "Only 1 in 10 adults gets the recommended 150 minutes a week.",
    "Drink 8 glasses, sleep 7-9 hours, walk 10,000 steps.",
    "Cases rose from 1,234 to 5,678 between 2015 and 2016.",
    "Up 0.5 per cent, +3 on the day, -2 on the week.",
    "+15 points in the polls since 2016",
    "England were 250-3 at lunch, 412-8 at stumps.",
    "The 9/11 memorial drew 6.5 million visitors.",
    "Lanes 1 2 3 4 5 6 7 8 were all used in the 100m final.",
    "Call of Duty 4 sold 13 million copies.",
    "Elevation 1 345 m, temperature -12.5 C.",
    "Exit 12 off I-95, then Route 1 for 3 miles.",
    "He wore number 23, then 45, then 23 again.",
    "Vote count: 62,984,828 to 65,853,514.",
    "Apollo 11 landed 20 July 1969 at 20:17 UTC.",
    "Windows 10 build 14393.693 fixed it.",
]

ALL_CASES = (
    EMAIL_CASES
    + PHONE_CASES
    + CARD_CASES
    + IBAN_CASES
    + IP_CASES
    + NATIONAL_ID_CASES
    + NEGATIVE_CASES
)

_MARKER = re.compile(r"\[\[(?P<kind>\w+):(?P<value>.+?)\]\]")

Span = tuple[PiiKind, int, int]


def _unmark(marked: str) -> tuple[str, set[Span]]:
    """The plain text of a labelled case and the PII spans its markers label."""
    pieces: list[str] = []
    spans: set[Span] = set()
    cursor = 0
    length = 0
    for match in _MARKER.finditer(marked):
        before = marked[cursor : match.start()]
        value = match["value"]
        length += len(before)
        spans.add((PiiKind(match["kind"]), length, length + len(value)))
        length += len(value)
        pieces += [before, value]
        cursor = match.end()
    pieces.append(marked[cursor:])
    return "".join(pieces), spans


def _values(marked: str) -> list[str]:
    return [match["value"] for match in _MARKER.finditer(marked)]


def _spans(findings: list[Finding]) -> set[Span]:
    return {(finding.kind, finding.start, finding.end) for finding in findings}


def test_labelled_set_is_large_enough() -> None:
    per_kind = Counter(kind for case in ALL_CASES for kind, _, _ in _unmark(case)[1])
    assert all(per_kind[kind] >= 40 for kind in PiiKind), per_kind
    assert len(NEGATIVE_CASES) >= 150
    assert all(not _unmark(case)[1] for case in NEGATIVE_CASES)


def test_detector_precision_recall_at_least_095(capsys: pytest.CaptureFixture[str]) -> None:
    tp: Counter[PiiKind] = Counter()
    fp: Counter[PiiKind] = Counter()
    fn: Counter[PiiKind] = Counter()
    errors: list[str] = []
    for case in ALL_CASES:
        text, expected = _unmark(case)
        found = _spans(detect(text))
        tp.update(kind for kind, _, _ in found & expected)
        for label, wrong, tally in (("fp", found - expected, fp), ("fn", expected - found, fn)):
            for kind, start, end in sorted(wrong):
                tally[kind] += 1
                errors.append(f"{label} {kind}: {text[start:end]!r} in {text!r}")

    rows = [f"{'kind':<12} {'tp':>4} {'fp':>4} {'fn':>4} {'precision':>9} {'recall':>7}"]
    scores: dict[PiiKind, tuple[float, float]] = {}
    for kind in PiiKind:
        precision = tp[kind] / (tp[kind] + fp[kind]) if tp[kind] + fp[kind] else 0.0
        recall = tp[kind] / (tp[kind] + fn[kind]) if tp[kind] + fn[kind] else 0.0
        scores[kind] = (precision, recall)
        rows.append(
            f"{kind.value:<12} {tp[kind]:>4} {fp[kind]:>4} {fn[kind]:>4}"
            f" {precision:>9.3f} {recall:>7.3f}"
        )
    with capsys.disabled():
        print("\nPII detector, span level over", len(ALL_CASES), "labelled cases")
        print("\n".join(rows + errors))

    for kind, (precision, recall) in scores.items():
        assert precision >= 0.95, (kind, errors)
        assert recall >= 0.95, (kind, errors)


def test_checksummed_kind_wins_an_overlap_even_when_shorter() -> None:
    # Read as a phone number, the run is "+49 301 12 4111 1111", one character longer than the
    # card it overlaps; the Luhn-checked card must still win.
    text = "ring +49 301 12 4111 1111 1111 1111"
    found = [(f.kind, text[f.start : f.end]) for f in detect(text)]
    assert found == [(PiiKind.CARD, "4111 1111 1111 1111")]


def test_longer_span_wins_an_overlap_of_one_kind() -> None:
    text = "from ::ffff:192.0.2.128 today"
    found = [(f.kind, text[f.start : f.end]) for f in detect(text)]
    assert found == [(PiiKind.IP, "::ffff:192.0.2.128")]


KEY = b"k" * 32
OTHER_KEY = b"o" * 32
SAMPLE = "Mail Bob@Example.com or call +44 20 7946 0958 from 10.0.0.1, SSN 078-05-1120."


def _minimise(text: str, policy: MinimisationPolicy, key: bytes = KEY) -> MinimisationResult:
    return Minimiser(policy=policy, token_key=key).apply(text)


def _token(text: str, key: bytes = KEY) -> str:
    result = _minimise(text, MinimisationPolicy.TOKENIZE, key)
    tokens = re.findall(r"\[[A-Z_]+:[0-9a-f]{12}\]", result.text)
    assert len(tokens) == 1, result.text
    return str(tokens[0])


def test_redact_replaces_each_span_by_its_kind() -> None:
    result = _minimise(SAMPLE, MinimisationPolicy.REDACT)
    assert result.text == "Mail [EMAIL] or call [PHONE] from [IP], SSN [NATIONAL_ID]."
    text = "Card 4111 1111 1111 1111 to GB82 WEST 1234 5698 7654 32"
    assert _minimise(text, MinimisationPolicy.REDACT).text == "Card [CARD] to [IBAN]"


def test_counts_and_total() -> None:
    text = "a@example.com, b@example.com, 8.8.8.8 and NI AB123456C"
    result = _minimise(text, MinimisationPolicy.REDACT)
    assert result.counts == {PiiKind.EMAIL: 2, PiiKind.IP: 1, PiiKind.NATIONAL_ID: 1}
    assert result.total == 4


def test_nothing_found_leaves_text_and_counts_empty() -> None:
    text = "Golden State led 51-50 on 2017-02-07, see http://ow.ly/KiDDJ"
    for policy in MinimisationPolicy:
        result = _minimise(text, policy)
        assert (result.text, result.counts, result.total) == (text, {}, 0)


def test_reject_keeps_text_and_reports_counts() -> None:
    result = _minimise(SAMPLE, MinimisationPolicy.REJECT)
    assert result.text == SAMPLE
    assert result.counts == {
        PiiKind.EMAIL: 1,
        PiiKind.PHONE: 1,
        PiiKind.IP: 1,
        PiiKind.NATIONAL_ID: 1,
    }
    assert result.total == 4


def test_token_is_truncated_hmac_of_kind_and_normalised_value() -> None:
    digest = hmac.new(KEY, b"email\x00bob@example.com", hashlib.sha256).hexdigest()
    assert _token("write to Bob@Example.com") == f"[EMAIL:{digest[:12]}]"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Bob@Example.com", "bob@example.com"),
        ("call 415-555-2671", "call (415) 555 2671"),
        ("card 4111 1111 1111 1111", "card 4111-1111-1111-1111"),
        ("iban GB82 WEST 1234 5698 7654 32", "iban GB82WEST12345698765432"),
        ("ssn 078-05-1120", "ssn 078 05 1120"),
        ("ni AB 12 34 56 C", "ni AB123456C"),
        ("host 2001:DB8::1", "host 2001:0db8:0:0:0:0:0:1"),
    ],
)
def test_equal_values_get_equal_tokens(first: str, second: str) -> None:
    assert _token(first) == _token(second)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("bob@example.com", "alice@example.com"),
        ("call 415-555-2671", "call 415-555-2672"),
        ("host 10.0.0.1", "host 10.0.0.2"),
    ],
)
def test_different_values_get_different_tokens(first: str, second: str) -> None:
    assert _token(first) != _token(second)


def test_different_keys_give_different_tokens() -> None:
    assert _token("bob@example.com") != _token("bob@example.com", OTHER_KEY)
    assert _token("host 10.0.0.1") != _token("host 10.0.0.1", OTHER_KEY)


def test_tokenize_needs_a_key() -> None:
    with pytest.raises(ConfigError):
        Minimiser(policy=MinimisationPolicy.TOKENIZE, token_key=b"")


@pytest.mark.parametrize("policy", [MinimisationPolicy.REDACT, MinimisationPolicy.TOKENIZE])
def test_no_labelled_value_survives_minimisation(policy: MinimisationPolicy) -> None:
    minimiser = Minimiser(policy=policy, token_key=KEY)
    for case in ALL_CASES:
        text, _ = _unmark(case)
        output = minimiser.apply(text).text
        for value in _values(case):
            assert value not in output, (value, output)


PII_FRAGMENTS = [value for case in ALL_CASES for value in _values(case)]
PIIISH_ALPHABET = "0123456789 +-.()@:/,#abcdefABCDEFGBXYZ"


@settings(database=None, deadline=None, max_examples=300)
@given(
    st.one_of(
        st.text(),
        st.text(alphabet=PIIISH_ALPHABET),
        st.lists(st.sampled_from([*PII_FRAGMENTS, " ", "-", ".", ":", "@", "x"])).map("".join),
    )
)
def test_detect_spans_are_sorted_disjoint_in_bounds(text: str) -> None:
    findings = detect(text)
    for finding in findings:
        assert 0 <= finding.start < finding.end <= len(text)
    for left, right in itertools.pairwise(findings):
        assert left.end <= right.start
    for policy in MinimisationPolicy:
        result = _minimise(text, policy)
        assert result.total == len(findings)
