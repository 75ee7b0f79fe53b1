"""Synthetic screenshot-triage cases: an app screen, a customer message, a voice message.

The screen's dialog, banner or toast carries the label's evidence; messages range from
specific to vague, are sometimes missing or misleading (about another label), so the
screenshot is often needed. Wordings are fixed phrases or composed from a template and
a label noun ("{x} was declined" + "Your card"). Every phrase and template pool is split
three ways, so test wordings are never seen in training.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

T = TypeVar("T")

LABELS = ("payment", "login", "crash", "shipping", "refund", "other")

SCREENS = {
    "payment": [
        "Payment declined",
        "Card was declined (code 402)",
        "Transaction failed: insufficient funds",
        "Unable to process your payment",
        "Your bank rejected the charge",
        "Payment method invalid",
        "Payment authorization failed",
        "Card expired: update your payment method",
        "3-D Secure verification failed",
        "Billing address does not match card",
        "Charge could not be completed",
        "Payment gateway timeout",
        "Your card issuer declined this purchase",
        "Insufficient balance on card ending 4242",
        "Payment not processed. Try another card.",
        "We couldn't charge your card",
        "Purchase blocked by your bank",
        "CVC check failed",
        "Transaction error E-PAY-17",
        "Order total could not be paid",
    ],
    "login": [
        "Incorrect password",
        "Account locked after too many attempts",
        "Invalid username or password",
        "Session expired, please sign in again",
        "Two-factor code is invalid",
        "Sign-in failed",
        "Your account has been suspended",
        "Password reset link expired",
        "Email address not verified",
        "Login service unavailable",
        "Too many login attempts",
        "Authentication error 401",
        "Wrong email or password",
        "Your session has timed out",
        "Verification code expired",
        "Sign in blocked for security reasons",
        "Account disabled. Contact support.",
        "We don't recognize this device",
        "Username not found",
        "Please log in to continue",
    ],
    "crash": [
        "The app has stopped",
        "Unexpected error. The app will close.",
        "Fatal exception: NullPointerException",
        "Something went wrong. Restart the app.",
        "Application not responding",
        "Segmentation fault (core dumped)",
        "Error: out of memory",
        "The app quit without warning",
        "Crash report sent to developers",
        "Unhandled exception at 0x0041F2",
        "Oops! This page crashed",
        "ANR: the app is not responding",
        "Unfortunately, ShopFast has stopped",
        "Fatal error: application terminated",
        "The app closed because of a problem",
        "Exception in thread main",
        "Kernel panic in render process",
        "Stack overflow in checkout module",
        "Runtime error: index out of range",
        "App stopped responding. Close app?",
    ],
    "shipping": [
        "Delivery delayed",
        "Package in transit for 12 days",
        "Shipment lost: contact the carrier",
        "Courier could not find the address",
        "Delivery attempt failed",
        "Parcel returned to sender",
        "Estimated delivery: unknown",
        "Your package is held at customs",
        "Carrier exception: parcel damaged",
        "Order not shipped yet",
        "Delivery address invalid",
        "Tracking number not recognized",
        "Shipment delayed by the carrier",
        "Your order is still being prepared",
        "Package undeliverable",
        "Tracking shows no movement",
        "Delivery rescheduled to next week",
        "Parcel stuck in sorting center",
        "Courier unable to access building",
        "Order lost in transit",
    ],
    "refund": [
        "Refund pending",
        "Refund request denied",
        "Return received: refund in process",
        "Refund failed: original payment method closed",
        "Refund amount: $0.00",
        "Return window expired",
        "Refunds take 5-10 business days",
        "Partial refund issued",
        "Refund status: on hold",
        "Return label could not be generated",
        "This order is not eligible for a refund",
        "Store credit issued instead of refund",
        "Refund rejected: item not returned",
        "We are processing your refund",
        "Refund declined by merchant",
        "Money back request received",
        "Refund will appear on your statement soon",
        "Refund cancelled",
        "Return not accepted: outside return period",
        "Refund issued as gift card",
    ],
    "other": [
        "Welcome back!",
        "Profile changes are live",
        "A new version is available",
        "Settings saved",
        "Rate our app",
        "No new notifications",
        "Newsletter subscription confirmed",
        "Dark mode enabled",
        "Language changed to English",
        "Storage almost full",
        "Invite your friends",
        "How did we do? Take our survey",
        "Thanks for your feedback!",
        "Nothing in your wishlist yet",
        "Profile photo updated",
        "Notifications turned on",
        "You have 3 new messages",
        "Password changed successfully",
        "Welcome to ShopFast Plus",
        "Check out our new arrivals",
    ],
}

# Screens that name a topic but show no problem (a success screen says "shipped"; nothing
# is wrong): label other. Seven in ten of the `other` cases show one.
NO_PROBLEM_SCREENS = [
    "Your order has shipped!",
    "Payment successful",
    "Thank you! Your payment was received",
    "Order delivered",
    "Refund completed",
    "Your refund has been issued",
    "You're signed in",
    "Welcome back, you are logged in",
    "Order confirmed",
    "Your package is on its way",
    "Delivered: left at front door",
    "Payment method saved",
    "Refund approved",
    "All systems operational",
    "App updated to the latest version",
    "Checkout complete",
    "Card added successfully",
    "Arriving tomorrow by 8 pm",
    "Return received, thank you",
    "Two-factor authentication enabled",
    "Subscription renewed",
    "Your receipt has been emailed",
    "Sign-in successful",
    "Your order is ready for pickup",
    "No issues found with your account",
    "Everything looks good",
    "Your payment was approved",
    "Password updated",
    "Your email address has been verified",
    "Thanks, your feedback was sent",
    "Your return label is ready to print",
    "Your account settings were saved",
    "Package handed to the courier",
    "Your card was charged successfully",
    "Logged in from a new device: that was you",
    "Update installed, no action needed",
    "Order #4471 was completed",
    "Your money is back on your card",
    "Your login is secure",
    "Ready when you are: nothing to fix",
]

# ... and composed the same way as problems are: "{x} went through" + "Your payment".
NO_PROBLEM_TEMPLATES = (
    [
        "Your order",
        "Your payment",
        "Your refund",
        "Your parcel",
        "Your return",
        "Your sign-in",
        "The delivery",
        "Your new card",
        "Your password reset",
        "Your subscription",
        "Your account",
    ],
    [
        "{x} was successful",
        "{x} is confirmed",
        "{x} went through",
        "{x} is complete",
        "{x} has been processed",
        "{x} was approved",
        "Success! {x} is done",
        "{x}: all set",
        "{x} is up to date",
        "Thanks! {x} was received",
        "{x} is on its way",
        "{x} was accepted",
        "Good news: {x} is ready",
        "{x} finished without problems",
        "{x} is active",
        "Done: {x} was updated",
        "{x} was saved",
        "{x} arrived safely",
        "{x} worked",
        "{x} has no problems",
        "All good: {x} went fine",
        "{x} was completed without errors",
        "Great news, {x} succeeded",
        "{x}: no action needed",
        "We've finished processing {x}",
        "{x} is all done",
        "{x} is verified",
        "{x} looks fine",
        "Nice! {x} is sorted",
        "{x} went smoothly",
    ],
)

# What real dialogs and alerts say under their message, whatever the problem: advice and
# contact lines that name no label. A screen shows one under its status message
# GUIDANCE_SHARE of the time (split like every pool), so the status-line pointer learns to
# pass over them to the message itself.
GUIDANCE = [
    "Please try again later.",
    "Try again later or contact support.",
    "If the problem continues, contact our support team.",
    "Need help? Visit the Help Center.",
    "Please try again in a few minutes.",
    "Contact customer service for assistance.",
    "We apologize for the inconvenience.",
    "Refresh the page and try again.",
    "Still having trouble? Chat with us.",
    "Our team has been notified.",
    "Call us at 1-800-555-0199 if you need help.",
    "Check your details and try again.",
    "Questions? Email help@shop.example.",
    "For more information, see our FAQ.",
    "Tap OK to continue.",
    "Sorry about that.",
    "Please contact support and quote this screen.",
    "Try again, or reach us any time via live chat.",
    "You can also call our help line, open 24/7.",
    "If this keeps happening, let us know.",
    "Go back and try once more.",
    "Our support team is happy to help.",
    "Please wait a moment and retry.",
    "See the help pages for what to do next.",
]
GUIDANCE_SHARE = 0.35


# Training-only screen wordings, added to the train pools after the split (so the val and
# test pools stay as they are): success screens that negate a problem word, which read
# much like the problem to a sentence embedding, and technical crash messages.
TRAIN_ONLY_NO_PROBLEM_TEMPLATES = [
    "{x} finished with no errors",
    "No errors: {x} is complete",
    "{x} went through without any issues",
    "Nothing went wrong with {x}",
    "{x}: 0 errors, 0 warnings",
    "{x} is done and error-free",
    "{x} succeeded, nothing failed",
]
TRAIN_ONLY_SCREENS = {
    "crash": [
        "Runtime error in cart service",
        "Process terminated unexpectedly",
        "Fatal error: the app must close",
        "Memory access violation in the renderer",
        "Service crashed with exit code 139",
        "Assertion failed in order module",
    ],
    "other": ["No errors found", "Sync finished with no failures", "The check passed without warnings"],
}

MESSAGES = {
    "payment": [
        "My card keeps getting declined at checkout.",
        "I can't pay for my order, the payment fails every time.",
        "Why was my credit card rejected?",
        "The payment page gives me an error when I try to buy.",
        "I was charged but the payment shows as failed.",
        "Checkout won't accept my card.",
        "My payment didn't go through.",
        "Paying with my debit card doesn't work.",
        "The transaction was refused by my bank?",
        "The bank keeps refusing my payment.",
        "Card payment error at the last step.",
        "Why can't I complete my purchase?",
        "It won't take my Visa.",
    ],
    "login": [
        "I can't log into my account.",
        "It says my password is wrong but it isn't.",
        "My account got locked.",
        "I never receive the two factor code.",
        "I keep getting logged out.",
        "I can't sign in anymore.",
        "The login page rejects my email.",
        "Password reset doesn't work.",
        "How do I get back into my account?",
        "I'm locked out of my account.",
        "The verification code never works.",
        "It keeps saying wrong password.",
        "Can't access my account since yesterday.",
    ],
    "crash": [
        "The app crashes when I open it.",
        "It keeps closing by itself.",
        "The app freezes and then shuts down.",
        "Every time I tap the cart the app crashes.",
        "Your app stopped working after the update.",
        "It just shows an error and quits.",
        "The app won't stay open.",
        "Crashes constantly on my phone.",
        "The page crashed again.",
        "The app just closes when I try to pay.",
        "It crashed three times today.",
        "App shuts down on startup.",
        "The screen freezes and the app dies.",
    ],
    "shipping": [
        "Where is my package?",
        "My order hasn't arrived yet.",
        "Tracking hasn't updated in a week.",
        "The courier says they couldn't deliver.",
        "My parcel seems to be lost.",
        "When will my order ship?",
        "The delivery is very late.",
        "It says delivered but I got nothing.",
        "Customs is holding my package.",
        "My delivery is late.",
        "The parcel never came.",
        "Order still not shipped after two weeks.",
        "Where's my order? It's been ages.",
    ],
    "refund": [
        "I still haven't received my refund.",
        "I returned the item, where is my money?",
        "My refund was denied, why?",
        "How long does a refund take?",
        "I want my money back.",
        "The refund amount is wrong.",
        "You refunded only part of my order.",
        "I need a refund for a damaged item.",
        "Can I get a refund instead of credit?",
        "Still waiting for my money back.",
        "Why was my refund rejected?",
        "I returned it weeks ago and got nothing.",
        "Please refund my order.",
    ],
    "other": [
        "How do I change my profile picture?",
        "Can I turn on dark mode?",
        "Do you have a student discount?",
        "I'd like to unsubscribe from emails.",
        "How do I invite a friend?",
        "Is there a desktop version?",
        "Can I change the language?",
        "Just wanted to say thanks!",
        "Where can I leave feedback?",
        "How do I update my address book?",
        "Love the app, just a suggestion.",
        "Just confirming my order went through, thanks!",
        "All good now, thank you.",
        "My package arrived, thanks!",
        "Thanks, the refund came through.",
        "I managed to log in, thanks for the help.",
        "Payment worked this time, cheers.",
        "Can I get notifications by SMS?",
        "Is there a loyalty program?",
    ],
}

VAGUE = [
    "It doesn't work.",
    "Help please.",
    "Something went wrong.",
    "This is not okay.",
    "I have a problem.",
    "Can someone look at this?",
    "Please fix this.",
    "What is going on?",
    "Not happy.",
    "See the screenshot.",
    "Urgent!",
    "This keeps happening.",
]

# Composed wordings: a template per label with "{x}", filled from a list of label nouns.
# Templates are split between train, val and test (test wordings never seen in
# training); the nouns ("your card", "the parcel") are shared.
SCREEN_TEMPLATES = {
    "payment": (
        [
            "Payment",
            "Your card",
            "Card ending 4242",
            "The transaction",
            "Your Visa card",
            "The charge",
            "Your payment method",
            "Checkout payment",
            "Your debit card",
            "Mastercard ending 0019",
            "The purchase",
        ],
        [
            "{x} was declined",
            "{x} failed",
            "{x} could not be processed",
            "{x} was rejected by the bank",
            "{x} did not go through",
            "{x} was not authorized",
            "{x} was refused by the issuer",
            "{x} could not be charged",
            "{x}: insufficient funds",
            "{x} was blocked by your bank",
            "{x} needs 3-D Secure verification",
            "{x} timed out at the payment gateway",
            "{x} returned error code 402",
            "{x} was flagged as suspicious",
            "{x} could not be completed",
            "{x} is expired",
            "{x} was cancelled by the processor",
            "{x} failed the CVC check",
        ],
    ),
    "login": (
        [
            "Sign-in",
            "Login",
            "Your password",
            "Your account",
            "The verification code",
            "Two-factor authentication",
            "Your session",
            "Authentication",
            "The one-time code",
            "Account access",
            "Single sign-on",
        ],
        [
            "{x} failed",
            "{x} is incorrect",
            "{x} was locked after too many attempts",
            "{x} has expired",
            "{x} was rejected",
            "{x} is not valid",
            "{x} was blocked for security reasons",
            "{x} could not be verified",
            "{x} timed out. Please sign in again",
            "{x} is temporarily suspended",
            "{x} was not recognized",
            "{x} requires a password reset",
            "{x} returned error 401",
            "{x} was denied",
            "{x} is disabled",
            "{x} could not be confirmed",
            "{x} needs re-authentication",
            "{x} is locked",
        ],
    ),
    "crash": (
        [
            "The app",
            "ShopFast",
            "The application",
            "The checkout screen",
            "The main process",
            "The renderer",
            "The cart page",
            "This screen",
            "The product page",
            "The background service",
            "The home feed",
        ],
        [
            "{x} has stopped",
            "{x} crashed unexpectedly",
            "{x} is not responding",
            "{x} quit unexpectedly",
            "{x} hit a fatal exception",
            "{x} ran out of memory",
            "{x} closed because of a problem",
            "{x} threw an unhandled exception",
            "{x} stopped working",
            "{x} terminated with a segmentation fault",
            "{x} froze and was shut down",
            "{x} encountered a fatal error",
            "{x} keeps stopping",
            "{x} failed to start",
            "{x} raised NullPointerException",
            "{x} had to close",
            "{x} crashed (stack overflow)",
            "{x} aborted with a runtime error",
        ],
    ),
    "shipping": (
        [
            "Your package",
            "The parcel",
            "Your order",
            "Shipment #48213",
            "The delivery",
            "Your shipment",
            "Package 55-0912",
            "Your parcel",
            "Order #10234",
            "Your box",
            "The consignment",
        ],
        [
            "{x} is delayed",
            "{x} was lost in transit",
            "{x} is held at customs",
            "{x} could not be delivered",
            "{x} was returned to sender",
            "{x} has not shipped yet",
            "{x} is stuck at the sorting center",
            "{x} was damaged in transit",
            "{x} missed the delivery window",
            "{x} shows no tracking updates",
            "{x}: delivery address invalid",
            "{x} was rescheduled to next week",
            "{x} is still in transit",
            "{x}: courier could not access the building",
            "{x} is waiting for carrier pickup",
            "{x} was delivered to the wrong address",
            "{x}: delivery date unknown",
            "{x} was misrouted",
        ],
    ),
    "refund": (
        [
            "Your refund",
            "Refund request",
            "The refund",
            "Return #7731",
            "Your return",
            "Money back request",
            "Refund for order #5521",
            "The reimbursement",
            "Refund of $49.99",
            "Return and refund",
            "Refund claim",
        ],
        [
            "{x} is pending",
            "{x} was denied",
            "{x} is being processed",
            "{x} failed to reach your bank",
            "{x} was issued as store credit",
            "{x} is on hold",
            "{x} was rejected",
            "{x} will take 5-10 business days",
            "{x} was only partially approved",
            "{x} was cancelled",
            "{x} is outside the return window",
            "{x} is not eligible",
            "{x} is awaiting the returned item",
            "{x} was issued as a gift card",
            "{x}: amount $0.00",
            "{x} was declined by the merchant",
            "{x} could not be issued",
            "{x} is delayed",
        ],
    ),
    "other": (
        [
            "Your profile",
            "Settings",
            "Dark mode",
            "Notifications",
            "Your wishlist",
            "Language",
            "The newsletter",
            "Your photo",
            "App theme",
            "Your preferences",
            "Email alerts",
        ],
        [
            "{x} was updated",
            "{x} saved",
            "{x} enabled",
            "{x} turned on",
            "{x} changed",
            "{x} is empty",
            "{x}: subscription confirmed",
            "{x} synced",
            "{x} restored to defaults",
            "{x} turned off",
            "{x} updated successfully",
            "{x} are up to date",
            "{x} was shared",
            "{x} is ready",
            "{x} applied",
            "{x} was reset",
            "{x} backed up",
            "{x} imported",
        ],
    ),
}

MESSAGE_TEMPLATES = {
    "payment": (
        ["my card", "my payment", "my credit card", "my Visa", "my debit card", "the transaction", "my PayPal payment"],
        [
            "Hi, {x} keeps getting declined.",
            "Why was {x} rejected at checkout?",
            "{x} won't go through.",
            "I tried three times and {x} fails.",
            "{x} bounced even though I have money.",
            "Checkout says {x} is invalid.",
            "The bank says {x} was blocked by you.",
            "{x} shows an error on the last step.",
            "Is there a problem with {x}?",
            "{x} was refused again, what now?",
            "I can't finish buying because {x} is not accepted.",
            "{x} just fails.",
        ],
    ),
    "login": (
        ["my account", "my password", "the login page", "the sign-in screen", "my two-factor code", "the reset link", "my email login"],
        [
            "I can't get into {x}.",
            "{x} says I'm locked out.",
            "{x} keeps rejecting me.",
            "{x} doesn't work anymore.",
            "Why is {x} blocked?",
            "{x} tells me the password is wrong.",
            "I reset it but {x} still fails.",
            "{x} never lets me in.",
            "{x} logs me out every time.",
            "Help, {x} is locked.",
            "{x} says the code is invalid.",
            "I'm stuck at {x}.",
        ],
    ),
    "crash": (
        ["the app", "your app", "the cart screen", "the checkout page", "the app on my phone", "the product page", "the new version"],
        [
            "{x} crashes every time.",
            "{x} keeps closing by itself.",
            "{x} freezes and shuts down.",
            "{x} just quits.",
            "{x} stopped working after the update.",
            "{x} won't open at all.",
            "{x} dies when I tap anything.",
            "{x} closes as soon as it starts.",
            "{x} goes black and exits.",
            "Every time I open {x} it crashes.",
            "{x} hangs and then closes.",
            "{x} keeps crashing on me.",
        ],
    ),
    "shipping": (
        ["my package", "my order", "my parcel", "the delivery", "my shipment", "my box", "the courier"],
        [
            "Where is {x}?",
            "{x} still hasn't arrived.",
            "{x} is two weeks late.",
            "Tracking for {x} hasn't moved.",
            "{x} seems to be lost.",
            "{x} went to the wrong address.",
            "When will {x} get here?",
            "{x} is stuck at customs.",
            "{x} says delivered but I have nothing.",
            "{x} never showed up.",
            "{x} has been in transit forever.",
            "Has {x} even shipped?",
        ],
    ),
    "refund": (
        ["my refund", "my money back", "the refund", "my return", "the reimbursement", "my store credit refund", "the partial refund"],
        [
            "I'm still waiting for {x}.",
            "Where is {x}?",
            "Why was {x} denied?",
            "{x} is taking too long.",
            "{x} hasn't shown up on my card.",
            "I sent the item back, what about {x}?",
            "{x} was the wrong amount.",
            "Please process {x}.",
            "How long until I get {x}?",
            "{x} got rejected, why?",
            "I want {x} for the broken item.",
            "{x} was cancelled without reason.",
        ],
    ),
    "other": (
        ["my profile picture", "the language", "my email preferences", "the theme", "the newsletter", "my display name", "notification sounds"],
        [
            "How do I change {x}?",
            "Can I update {x}?",
            "Where do I find {x} in settings?",
            "Is it possible to turn off {x}?",
            "Just a question about {x}.",
            "I'd like to customize {x}.",
            "Could you add more options for {x}?",
            "Where can I edit {x}?",
            "Any tips for {x}?",
            "Can I reset {x}?",
            "I love the app! How do I set {x}?",
            "Quick question: can I change {x} on desktop?",
        ],
    ),
}

SPLITS = ("train", "val", "test")

# Inputs the task should not answer, for training it to say so (generate.py writes them as
# out-of-scope records): screens and messages about matters other than a shop's app, and
# the shop's own matters in languages the task does not read. `data heldout` draws its
# out-of-scope items from other lists (heldout.OTHER_TOPIC, OTHER_LANGUAGE: other wordings,
# and German, Spanish, French and Portuguese, which no training item uses).
OFF_TOPIC = [
    ("Pipeline failed at stage 'test' (3 failing tests)", "the CI is red again since this morning"),
    ("Deployment to staging failed: health check timed out", "staging deploy keeps timing out"),
    ("Disk usage on /var is at 97%", "the server disk is almost full"),
    ("Segmentation fault (core dumped)", "my C program crashes when I run it"),
    ("npm ERR! code ELIFECYCLE", "npm install fails on my laptop"),
    ("Connection to database db-02 refused", "the database went down overnight"),
    ("VPN disconnected: authentication server unreachable", "I can't connect to the company VPN"),
    ("Kernel update requires a restart", "should I restart my work computer now"),
    ("Docker daemon is not running", "docker stopped working after the upgrade"),
    ("Compilation error: missing semicolon on line 42", "my code won't compile"),
    ("Backup job 'nightly-db' did not complete", "last night's backup didn't finish"),
    ("License server not responding", "the CAD software says no license available"),
    ("Team lunch moved to Thursday at 12:30", "is lunch still on this week"),
    ("Quarterly review: slides due Friday", "when do I need to send my slides"),
    ("New comment on your document 'Budget 2027'", "someone commented on my spreadsheet"),
    ("Room 4B is booked by another team", "our meeting room is double booked"),
    ("Your train to Leeds is delayed by 25 minutes", "will I make my connection"),
    ("Bus 14 is diverted because of road works", "why didn't my bus come"),
    ("Hotel check-in opens at 3 pm", "can I check in early at the hotel"),
    ("Rain expected after 4 pm, take an umbrella", "will it rain on the way home"),
    ("Heatwave alert: stay hydrated", "how hot will it get this weekend"),
    ("Library books due back on Monday", "can I renew my library books"),
    ("Exam timetable published for the spring term", "when is my maths exam"),
    ("Your child's school trip form is missing", "did I sign the trip form"),
    ("Dentist appointment tomorrow at 9:15", "can I move my dentist appointment"),
    ("Flu vaccination clinic opens next week", "where do I get the flu jab"),
    ("You reached 10,000 steps today!", "my step counter seems wrong"),
    ("Thermostat offline: check the Wi-Fi connection", "the heating app can't find my thermostat"),
    ("Robot vacuum stuck under the sofa", "my vacuum keeps getting stuck"),
    ("Front door lock battery low", "the smart lock battery is dying"),
    ("Washing machine cycle finished", "the washer beeps all the time"),
    ("New episode of your podcast is available", "the podcast app skips episodes"),
    ("Video upload processing: 45% done", "my video is taking forever to upload"),
    ("Anna mentioned you in the group chat", "I keep getting group chat notifications"),
    ("Garden waste collection moved to Wednesday", "when do they collect the bins now"),
    ("Choir rehearsal cancelled tonight", "is choir practice still happening"),
    ("Recipe saved: lemon drizzle cake", "how long do I bake the cake for"),
    ("Tennis court booking confirmed for Saturday", "can I book a second court"),
]
OFF_LANGUAGE = [  # the shop's own matters, in languages the task does not read
    ("Pagamento rifiutato dalla banca", "la mia carta non funziona"),
    ("Password errata, riprova", "non riesco ad accedere al mio account"),
    ("La spedizione è in ritardo", "il mio pacco non è ancora arrivato"),
    ("Il rimborso è in elaborazione", "quando riceverò il rimborso"),
    ("L'app si è chiusa inaspettatamente", "l'app continua a bloccarsi"),
    ("Betaling mislukt, probeer een andere kaart", "mijn betaling gaat niet door"),
    ("Inloggen mislukt: onjuist wachtwoord", "ik kan niet inloggen"),
    ("Je pakket is vertraagd", "waar blijft mijn pakket"),
    ("Terugbetaling wordt verwerkt", "ik heb mijn geld nog niet terug"),
    ("Platba byla zamítnuta", "moje karta nefunguje"),
    ("Přihlášení se nezdařilo", "nemůžu se přihlásit"),
    ("Betalningen nekades", "mitt kort fungerar inte"),
    ("Paketet är försenat", "var är mitt paket"),
    ("Płatność odrzucona", "nie mogę zapłacić"),
    ("Zwrot pieniędzy w trakcie realizacji", "kiedy dostanę zwrot"),
    ("Aplikacja przestała działać", "aplikacja ciągle się zawiesza"),
]


def pool(items: list[T], split: str) -> list[T]:
    """Disjoint parts of a fixed random order of `items` (the same for every dataset seed):
    train gets 2/3, val and test 1/6 each (at least one)."""
    n = len(items)
    shuffled = [items[i] for i in np.random.default_rng(20261122).permutation(n)]
    cut_train, cut_val = max(1, round(n * 2 / 3)), max(1, round(n * 5 / 6))
    return {"train": shuffled[:cut_train], "val": shuffled[cut_train:cut_val], "test": shuffled[cut_val:]}[split] or shuffled[-1:]


def wording(rng, label: str, split: str, fixed: dict, composed: dict) -> str:
    """A fixed phrase (40%) or a composed one (60%) for `label`, from `split`'s pools."""
    if rng.random() < 0.4:
        return str(rng.choice(pool(fixed[label], split)))
    nouns, templates = composed[label]
    phrase = str(rng.choice(pool(templates, split))).format(x=str(rng.choice(nouns)))
    return phrase[0].upper() + phrase[1:]


def wordings(label: str, split: str, fixed: dict, composed: dict) -> set[str]:
    """Every wording `wording` can give for `label` in `split` (for screens, `screen_wording`)."""
    nouns, templates = composed[label]
    made = {t.format(x=n) for t in pool(templates, split) for n in nouns}
    no_problem = set()
    if fixed is SCREENS and label == "other":
        nouns, templates = NO_PROBLEM_TEMPLATES
        no_problem = set(pool(NO_PROBLEM_SCREENS, split)) | {t.format(x=n) for t in no_problem_templates(split) for n in nouns}
    train_only = set(TRAIN_ONLY_SCREENS.get(label, [])) if fixed is SCREENS and split == "train" else set()
    return set(pool(fixed[label], split)) | {m[0].upper() + m[1:] for m in made} | no_problem | train_only


def no_problem_templates(split: str) -> list[str]:
    """The success-screen templates of `split` (train's with TRAIN_ONLY_NO_PROBLEM_TEMPLATES)."""
    return pool(NO_PROBLEM_TEMPLATES[1], split) + (TRAIN_ONLY_NO_PROBLEM_TEMPLATES if split == "train" else [])


def screen_wording(rng, label: str, split: str) -> str:
    """A screen message for `label`: for `other`, seven times in ten a screen with no problem
    on it (a success screen names a topic; nothing is wrong)."""
    if label == "other" and rng.random() < 0.7:
        if rng.random() < 0.4:
            return str(rng.choice(pool(NO_PROBLEM_SCREENS, split)))
        nouns = NO_PROBLEM_TEMPLATES[0]
        return str(rng.choice(no_problem_templates(split))).format(x=str(rng.choice(nouns)))
    extra = TRAIN_ONLY_SCREENS.get(label, []) if split == "train" else []
    if extra and rng.random() < 0.15:
        return str(rng.choice(extra))
    return wording(rng, label, split, SCREENS, SCREEN_TEMPLATES)


def make_case(rng, split: str) -> dict:
    """One case: label, screen message (or None), the advice line under it (`guidance`, or
    None), customer text, voice text (or None), and the label the customer text alone shows
    (`message_label`: the label, another one for a misleading message, None for a vague or
    missing one)."""
    label = str(rng.choice(LABELS))
    screen = screen_wording(rng, label, split) if rng.random() > 0.1 else None
    kind = rng.choice(["specific", "vague", "misleading", "missing"], p=[0.45, 0.25, 0.1, 0.2])
    if screen is None:
        kind = "specific"  # something must carry the label
    message_label: str | None = None
    if kind == "specific":
        text = wording(rng, label, split, MESSAGES, MESSAGE_TEMPLATES)
        message_label = label
    elif kind == "vague":
        text = str(rng.choice(pool(VAGUE, split)))
    elif kind == "misleading":
        message_label = str(rng.choice([name for name in LABELS if name != label]))
        text = wording(rng, message_label, split, MESSAGES, MESSAGE_TEMPLATES)
    else:
        text = ""
    voice = wording(rng, label, split, MESSAGES, MESSAGE_TEMPLATES) if rng.random() < 0.25 else None
    layout = str(rng.choice(["dialog", "banner", "toast"]))
    guidance = str(rng.choice(pool(GUIDANCE, split))) if screen is not None and rng.random() < GUIDANCE_SHARE else None
    return {
        "label": label,
        "screen": screen,
        "guidance": guidance,
        "text": text,
        "message_kind": str(kind),
        "message_label": message_label,
        "voice": voice,
        "mobile": bool(rng.random() < 0.4),
        "dark": bool(rng.random() < 0.3),
        "layout": layout,
    }


def make_outlier(rng, split: str) -> dict:
    """An input the task should not answer, from `split`'s part of the pools: a screen and
    a message about other matters (three in four) or about the shop's matters in another
    language; sometimes the screen alone or the message alone."""
    kind = "topic" if rng.random() < 0.75 else "language"
    pairs = pool(OFF_TOPIC if kind == "topic" else OFF_LANGUAGE, split)
    screen, text = pairs[int(rng.integers(len(pairs)))]
    shown = str(rng.choice(["both", "screen", "message"], p=[0.6, 0.2, 0.2]))
    return {
        "kind": kind,
        "screen": screen if shown != "message" else None,
        "text": text if shown != "screen" else "",
        "mobile": bool(rng.random() < 0.4),
        "dark": bool(rng.random() < 0.3),
        "layout": str(rng.choice(["dialog", "banner", "toast"])),
    }
