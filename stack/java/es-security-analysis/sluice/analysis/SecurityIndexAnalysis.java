/*
 * The four analysis components Elasticsearch's own .security index asks for, as a stable
 * analysis plugin for the local stack.
 *
 * The distribution on Maven Central (integ-test-zip) lacks the analysis-common module, and
 * the .security system index (users, roles, API keys) is created with an "email" analyzer:
 * tokenizer uax_url_email, filters pattern_capture, lowercase and unique. Without them no
 * API key can be stored. Each component here is the Lucene class analysis-common wraps
 * (lucene-analysis-common ships in the distribution's lib/), with the settings the
 * security index uses. Sluice's own indices use none of them.
 */
package sluice.analysis;

import java.util.List;
import java.util.regex.Pattern;

import org.apache.lucene.analysis.LowerCaseFilter;
import org.apache.lucene.analysis.TokenStream;
import org.apache.lucene.analysis.Tokenizer;
import org.apache.lucene.analysis.email.UAX29URLEmailTokenizer;
import org.apache.lucene.analysis.CharArraySet;
import org.apache.lucene.analysis.TokenFilter;
import org.apache.lucene.analysis.tokenattributes.CharTermAttribute;
import org.apache.lucene.analysis.tokenattributes.PositionIncrementAttribute;
import org.apache.lucene.analysis.pattern.PatternCaptureGroupTokenFilter;
import org.elasticsearch.plugin.Inject;
import org.elasticsearch.plugin.NamedComponent;
import org.elasticsearch.plugin.analysis.TokenFilterFactory;
import org.elasticsearch.plugin.analysis.TokenizerFactory;
import org.elasticsearch.plugin.settings.AnalysisSettings;
import org.elasticsearch.plugin.settings.BooleanSetting;
import org.elasticsearch.plugin.settings.ListSetting;

public final class SecurityIndexAnalysis {
    private SecurityIndexAnalysis() {}

    @AnalysisSettings
    public interface PatternCaptureSettings {
        @ListSetting(path = "patterns")
        List<String> patterns();

        @BooleanSetting(path = "preserve_original", defaultValue = true)
        boolean preserveOriginal();
    }

    @NamedComponent("pattern_capture")
    public static final class PatternCapture implements TokenFilterFactory {
        private final Pattern[] patterns;
        private final boolean preserveOriginal;

        @Inject
        public PatternCapture(PatternCaptureSettings settings) {
            this.patterns = settings.patterns().stream().map(Pattern::compile).toArray(Pattern[]::new);
            this.preserveOriginal = settings.preserveOriginal();
        }

        @Override
        public TokenStream create(TokenStream input) {
            // Elasticsearch also builds each component once with empty settings to check it: no patterns, no change.
            return patterns.length == 0 ? input : new PatternCaptureGroupTokenFilter(input, preserveOriginal, patterns);
        }
    }

    @NamedComponent("lowercase")
    public static final class Lowercase implements TokenFilterFactory {
        @Override
        public TokenStream create(TokenStream input) {
            return new LowerCaseFilter(input);
        }

        @Override
        public TokenStream normalize(TokenStream input) {
            return new LowerCaseFilter(input);
        }
    }

    @NamedComponent("unique")
    public static final class Unique implements TokenFilterFactory {
        @Override
        public TokenStream create(TokenStream input) {
            // The security index uses unique with only_on_same_position=false: drop repeats at any position.
            return new UniqueFilter(input);
        }
    }

    /** Passes each distinct term once (analysis-common's unique with only_on_same_position=false). */
    static final class UniqueFilter extends TokenFilter {
        private final CharTermAttribute term = addAttribute(CharTermAttribute.class);
        private final PositionIncrementAttribute position = addAttribute(PositionIncrementAttribute.class);
        private final CharArraySet seen = new CharArraySet(8, false);

        UniqueFilter(TokenStream input) {
            super(input);
        }

        @Override
        public boolean incrementToken() throws java.io.IOException {
            int skipped = 0;
            while (input.incrementToken()) {
                char[] copy = new char[term.length()];
                System.arraycopy(term.buffer(), 0, copy, 0, copy.length);
                if (seen.add(copy)) {
                    position.setPositionIncrement(position.getPositionIncrement() + skipped);
                    return true;
                }
                skipped += position.getPositionIncrement();
            }
            return false;
        }

        @Override
        public void reset() throws java.io.IOException {
            super.reset();
            seen.clear();
        }
    }

    @NamedComponent("uax_url_email")
    public static final class UaxUrlEmail implements TokenizerFactory {
        @Override
        public Tokenizer create() {
            return new UAX29URLEmailTokenizer();
        }
    }
}
