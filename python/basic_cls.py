"""Trains kmm's basic text classifier baseline and writes it with joblib.

Run by `kmm ensure --basic-cls` (the script is embedded in the kmm binary and fed to the
configured Python on stdin): `python3 - --out DIR`. Writes DIR/classifier.joblib (a
LogisticRegression) and DIR/vectorizer.joblib (a TfidfVectorizer), trained on the small labelled
set below, then loads both back and checks they predict the training labels' classes.

Exit codes: 0 written; 3 scikit-learn or joblib missing (kmm reports the baseline as skipped);
anything else is a failure.
"""

import argparse
import sys

# A small labelled set shipped with kmm: support-ticket style sentences, three classes.
DATA = [
    ("my invoice shows the wrong amount", "billing"),
    ("i was charged twice this month", "billing"),
    ("how do i update my credit card", "billing"),
    ("please send me a refund for the duplicate payment", "billing"),
    ("the price on my bill is higher than agreed", "billing"),
    ("can i get a receipt for my last payment", "billing"),
    ("the app crashes when i open settings", "technical"),
    ("login fails with an error message", "technical"),
    ("the page does not load on my phone", "technical"),
    ("uploading a file times out every time", "technical"),
    ("the server returns an internal error", "technical"),
    ("password reset link is broken", "technical"),
    ("thank you for the quick help", "other"),
    ("what are your opening hours", "other"),
    ("i would like to give some feedback", "other"),
    ("where is your office located", "other"),
    ("great service, keep it up", "other"),
    ("do you have a newsletter", "other"),
]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    try:
        import joblib
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError as error:
        print(f"missing Python package: {error}", file=sys.stderr)
        return 3

    import os

    texts = [text for text, _ in DATA]
    labels = [label for _, label in DATA]
    vectorizer = TfidfVectorizer(ngram_range=(1, 2))
    features = vectorizer.fit_transform(texts)
    classifier = LogisticRegression(max_iter=1000, random_state=0)
    classifier.fit(features, labels)

    os.makedirs(args.out, exist_ok=True)
    classifier_path = os.path.join(args.out, "classifier.joblib")
    vectorizer_path = os.path.join(args.out, "vectorizer.joblib")
    joblib.dump(classifier, classifier_path)
    joblib.dump(vectorizer, vectorizer_path)

    # Check the files as a consumer would: load and predict.
    loaded_classifier = joblib.load(classifier_path)
    loaded_vectorizer = joblib.load(vectorizer_path)
    predicted = loaded_classifier.predict(loaded_vectorizer.transform(texts))
    accuracy = sum(p == l for p, l in zip(predicted, labels)) / len(labels)
    print(f"basic_cls: {len(labels)} examples, classes {sorted(set(labels))}, training accuracy {accuracy:.2f}")
    if accuracy < 0.8:
        print("basic_cls: the trained classifier does not fit its own training data", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
