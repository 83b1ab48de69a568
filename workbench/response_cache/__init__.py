"""The response cache: answers already given, replayed when the same (or, opt-in, a similar) question comes again.

``keys`` says what makes two requests the same question and when the cache is used, ``guard`` which similar
questions must not share an answer, ``embedder`` the sentence embeddings of semantic matches, ``disk`` the
diskcache store, and ``answers`` how a request is answered through it.
"""
