"""Synthetic screenshot-triage cases: an app screen, a customer message, a voice message.

The screen's dialog, banner or toast carries the label's evidence; messages range from
specific to vague, are sometimes missing or misleading (about another label), so the
screenshot is often needed. Every wording pool is split three ways, so test phrasings
are never seen in training.
"""

from __future__ import annotations

LABELS = ("payment", "login", "crash", "shipping", "refund", "other")

SCREENS = {
    'payment': [
        'Payment declined',
        'Card was declined (code 402)',
        'Transaction failed: insufficient funds',
        'Unable to process your payment',
        'Your bank rejected the charge',
        'Payment method invalid',
        'Payment authorization failed',
        'Card expired: update your payment method',
        '3-D Secure verification failed',
        'Billing address does not match card',
        'Charge could not be completed',
        'Payment gateway timeout',
        'Your card issuer declined this purchase',
        'Insufficient balance on card ending 4242',
        'Payment not processed. Try another card.',
        "We couldn't charge your card",
        'Purchase blocked by your bank',
        'CVC check failed',
        'Transaction error E-PAY-17',
        'Order total could not be paid',
    ],
    'login': [
        'Incorrect password',
        'Account locked after too many attempts',
        'Invalid username or password',
        'Session expired, please sign in again',
        'Two-factor code is invalid',
        'Sign-in failed',
        'Your account has been suspended',
        'Password reset link expired',
        'Email address not verified',
        'Login service unavailable',
        'Too many login attempts',
        'Authentication error 401',
        'Wrong email or password',
        'Your session has timed out',
        'Verification code expired',
        'Sign in blocked for security reasons',
        'Account disabled. Contact support.',
        "We don't recognize this device",
        'Username not found',
        'Please log in to continue',
    ],
    'crash': [
        'The app has stopped',
        'Unexpected error. The app will close.',
        'Fatal exception: NullPointerException',
        'Something went wrong. Restart the app.',
        'Application not responding',
        'Segmentation fault (core dumped)',
        'Error: out of memory',
        'The app quit unexpectedly',
        'Crash report sent to developers',
        'Unhandled exception at 0x0041F2',
        'Oops! This page crashed',
        'ANR: the app is not responding',
        'Unfortunately, ShopFast has stopped',
        'Fatal error: application terminated',
        'The app closed because of a problem',
        'Exception in thread main',
        'Kernel panic in render process',
        'Stack overflow in checkout module',
        'Runtime error: index out of range',
        'App stopped responding. Close app?',
    ],
    'shipping': [
        'Delivery delayed',
        'Package in transit for 12 days',
        'Shipment lost: contact the carrier',
        'Courier could not find the address',
        'Delivery attempt failed',
        'Parcel returned to sender',
        'Estimated delivery: unknown',
        'Your package is held at customs',
        'Carrier exception: parcel damaged',
        'Order not shipped yet',
        'Delivery address invalid',
        'Tracking number not recognized',
        'Shipment delayed by the carrier',
        'Your order is still being prepared',
        'Package undeliverable',
        'Tracking shows no movement',
        'Delivery rescheduled to next week',
        'Parcel stuck in sorting center',
        'Courier unable to access building',
        'Order lost in transit',
    ],
    'refund': [
        'Refund pending',
        'Refund request denied',
        'Return received: refund in process',
        'Refund failed: original payment method closed',
        'Refund amount: $0.00',
        'Return window expired',
        'Refunds take 5-10 business days',
        'Partial refund issued',
        'Refund status: on hold',
        'Return label could not be generated',
        'This order is not eligible for a refund',
        'Store credit issued instead of refund',
        'Refund rejected: item not returned',
        'Your refund is being processed',
        'Refund declined by merchant',
        'Money back request received',
        'Refund will appear on your statement soon',
        'Refund cancelled',
        'Return not accepted: outside return period',
        'Refund issued as gift card',
    ],
    'other': [
        'Welcome back!',
        'Your profile was updated',
        'A new version is available',
        'Settings saved',
        'Rate our app',
        'No new notifications',
        'Newsletter subscription confirmed',
        'Dark mode enabled',
        'Language changed to English',
        'Storage almost full',
        'Invite your friends',
        'How did we do? Take our survey',
        'Thanks for your feedback!',
        'Your wishlist is empty',
        'Profile photo updated',
        'Notifications turned on',
        'You have 3 new messages',
        'Password changed successfully',
        'Welcome to ShopFast Plus',
        'Check out our new arrivals',
    ],
}

MESSAGES = {
    'payment': [
        'My card keeps getting declined at checkout.',
        "I can't pay for my order, the payment fails every time.",
        'Why was my credit card rejected?',
        'The payment page gives me an error when I try to buy.',
        'I was charged but the payment shows as failed.',
        "Checkout won't accept my card.",
        "My payment didn't go through.",
        "Paying with my debit card doesn't work.",
        'The transaction was refused by my bank?',
        'The bank keeps refusing my payment.',
        'Card payment error at the last step.',
        "Why can't I complete my purchase?",
        "It won't take my Visa.",
    ],
    'login': [
        "I can't log into my account.",
        "It says my password is wrong but it isn't.",
        'My account got locked.',
        'I never receive the two factor code.',
        'I keep getting logged out.',
        "I can't sign in anymore.",
        'The login page rejects my email.',
        "Password reset doesn't work.",
        'How do I get back into my account?',
        "I'm locked out of my account.",
        'The verification code never works.',
        'It keeps saying wrong password.',
        "Can't access my account since yesterday.",
    ],
    'crash': [
        'The app crashes when I open it.',
        'It keeps closing by itself.',
        'The app freezes and then shuts down.',
        'Every time I tap the cart the app crashes.',
        'Your app stopped working after the update.',
        'It just shows an error and quits.',
        "The app won't stay open.",
        'Crashes constantly on my phone.',
        'The page crashed again.',
        'The app just closes when I try to pay.',
        'It crashed three times today.',
        'App shuts down on startup.',
        'The screen freezes and the app dies.',
    ],
    'shipping': [
        'Where is my package?',
        "My order hasn't arrived yet.",
        "Tracking hasn't updated in a week.",
        "The courier says they couldn't deliver.",
        'My parcel seems to be lost.',
        'When will my order ship?',
        'The delivery is very late.',
        'It says delivered but I got nothing.',
        'My package is stuck at customs.',
        'My delivery is late.',
        'The parcel never came.',
        'Order still not shipped after two weeks.',
        "Where's my order? It's been ages.",
    ],
    'refund': [
        "I still haven't received my refund.",
        'I returned the item, where is my money?',
        'My refund was denied, why?',
        'How long does a refund take?',
        'I want my money back.',
        'The refund amount is wrong.',
        'You refunded only part of my order.',
        'I need a refund for a damaged item.',
        'Can I get a refund instead of credit?',
        'Still waiting for my money back.',
        'Why was my refund rejected?',
        'I returned it weeks ago and got nothing.',
        'Please refund my order.',
    ],
    'other': [
        'How do I change my profile picture?',
        'Can I turn on dark mode?',
        'Do you have a student discount?',
        "I'd like to unsubscribe from emails.",
        'How do I invite a friend?',
        'Is there a desktop version?',
        'Can I change the language?',
        'Just wanted to say thanks!',
        'Where can I leave feedback?',
        'How do I update my address book?',
        'Love the app, just a suggestion.',
        'Can I get notifications by SMS?',
        'Is there a loyalty program?',
    ],
}

VAGUE = ["It doesn't work.", "Help please.", "Something went wrong.", "This is not okay.", "I have a problem.",
         "Can someone look at this?", "Please fix this.", "What is going on?", "Not happy.", "See the screenshot.",
         "Urgent!", "This keeps happening."]

SPLITS = ("train", "val", "test")


def pool(items: list[str], split: str) -> list[str]:
    """Disjoint thirds by position: train gets 2/3, val and test 1/6 each (at least one)."""
    n = len(items)
    cut_train, cut_val = max(1, round(n * 2 / 3)), max(1, round(n * 5 / 6))
    return {"train": items[:cut_train], "val": items[cut_train:cut_val], "test": items[cut_val:]}[split] or items[-1:]


def make_case(rng, split: str) -> dict:
    """One case: label, screen message (or None), customer text, voice text (or None)."""
    label = str(rng.choice(LABELS))
    screen = str(rng.choice(pool(SCREENS[label], split))) if rng.random() > 0.1 else None
    kind = rng.choice(["specific", "vague", "misleading", "missing"], p=[0.45, 0.25, 0.1, 0.2])
    if screen is None:
        kind = "specific"  # something must carry the label
    if kind == "specific":
        text = str(rng.choice(pool(MESSAGES[label], split)))
    elif kind == "vague":
        text = str(rng.choice(pool(VAGUE, split)))
    elif kind == "misleading":
        other = str(rng.choice([l for l in LABELS if l != label]))
        text = str(rng.choice(pool(MESSAGES[other], split)))
    else:
        text = ""
    voice = str(rng.choice(pool(MESSAGES[label], split))) if rng.random() < 0.25 else None
    layout = str(rng.choice(["dialog", "banner", "toast"]))
    return {"label": label, "screen": screen, "text": text, "message_kind": str(kind), "voice": voice,
            "mobile": bool(rng.random() < 0.4), "dark": bool(rng.random() < 0.3), "layout": layout}
